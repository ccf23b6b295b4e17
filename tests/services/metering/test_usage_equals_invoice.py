"""One money calculation: for a closed period, the usage total the Usage page and the usage
API show is the invoice's subtotal, to the cent, whatever ran in the period."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from portal.extensions import db, limiter
from portal.models import User
from portal.services import calendar
from portal.services.invoicing import run as invoice_run
from portal.services.metering import deployments, rollups, runs


def _size(high: int, low: int = 0):
    """A size with up to 3 decimals, as the platform may report it."""
    return st.integers(low, high * 1000).map(lambda milli: Decimal(milli).scaleb(-3))


deployment = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["vm", "k8s", "session"]),
        "cpu_cores": _size(64, low=1),
        "memory_gb": _size(256),
        "storage_gb": _size(2000),
        "public_ip": st.booleans(),
        # where in the period it starts, and for how long it runs (None: to the end)
        "start": st.floats(0, 0.999),
        "runs": st.none() | st.integers(1, 40 * 86400),
    }
)


def _run_in_period(app, user_id: int, specs: list[dict]) -> tuple[str, int]:
    """The deployments, metered and invoiced for the last closed period: (YYYY-MM, subtotal)."""
    with app.app_context():
        user = db.session.get(User, user_id)
        start, end = calendar.last_complete_period()
        seconds = int((end - start).total_seconds())
        for n, spec in enumerate(specs):
            began = start + timedelta(seconds=int(spec["start"] * seconds))
            dep, _ = deployments.create_deployment(
                external_id=f"u{user_id}-d{n}",
                user=user,
                kind=spec["kind"],
                cpu_cores=spec["cpu_cores"],
                memory_gb=spec["memory_gb"],
                storage_gb=spec["storage_gb"],
                public_ip=spec["public_ip"],
                started_at=began,
            )
            if spec["runs"] is not None and began + timedelta(seconds=spec["runs"]) < end:
                deployments.delete_deployment(dep, ended_at=began + timedelta(seconds=spec["runs"]))
        db.session.commit()
        runs.meter_all(rollups.last_complete_hour())
        invoice, _ = invoice_run.generate_for_user(user, start, end)
        db.session.commit()
        subtotal = invoice.subtotal_minor
        assert subtotal == sum(line.amount_minor for line in invoice.lines)
        db.session.remove()
        return calendar.period_name(start), subtotal


def _page_total(text: str) -> int:
    shown = re.search(r'id="usage-total">\$([0-9,]+\.[0-9]{2})<', text).group(1)
    return int(Decimal(shown.replace(",", "")) * 100)


@settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # each example is a database run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=st.lists(deployment, min_size=1, max_size=6))
def test_a_closed_periods_usage_total_is_its_invoice_subtotal(
    app, client, auth, api, make_user, specs
):
    user = make_user()
    period, subtotal = _run_in_period(app, user.id, specs)

    limiter.reset()  # one login per example: the login rate limit is not under test
    auth.logout()  # the client is still logged in as the previous example's user
    assert auth.login(user).status_code in (302, 303)
    page = client.get(f"/usage/?period={period}")
    assert page.status_code == 200
    assert _page_total(page.get_data(as_text=True)) == subtotal

    answer = api.get(f"/usage?period={period}", token=api.token(user))
    assert answer.status_code == 200, answer.json
    assert answer.json["total_cost_minor"] == subtotal
    # and the lines by deployment add up to it, as the invoice's do
    assert sum(d["total_cost_minor"] for d in answer.json["deployments"]) == subtotal
