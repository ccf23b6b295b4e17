"""GET and PUT /budget: the round trip, null removes the cap, refused amounts name the
field, a user token reads only its own budget, an admin's any."""

from __future__ import annotations

from tests.blueprints.test_query_counts import counting


def test_round_trip_and_owner_scoping(api, make_user):
    pat = make_user("pat@example.com")
    token = api.token(pat)
    empty = api.get("/budget", token=token)
    assert empty.status_code == 200, empty.json
    assert empty.json["cap"] is None and empty.json["cap_minor"] is None
    assert (empty.json["spent"], empty.json["percent"], empty.json["reached"]) == (
        "0.00",
        None,
        False,
    )
    put = api.put("/budget", json={"cap": "120.50", "stop_at_cap": True}, token=token)
    assert put.status_code == 200, put.json
    body = api.get("/budget", token=token).json
    assert body == put.json
    assert (body["cap"], body["cap_minor"], body["stop_at_cap"]) == ("120.50", 12050, True)
    assert (body["user_id"], body["currency"], body["percent"]) == (pat.id, "USD", 0)
    assert body["period_start"].endswith("Z") and body["period_end"] > body["period_start"]
    number = api.put("/budget", json={"cap": 99, "stop_at_cap": False}, token=token).json
    assert (number["cap_minor"], number["stop_at_cap"]) == (9900, False)
    removed = api.put("/budget", json={"cap": None, "stop_at_cap": False}, token=token).json
    assert removed["cap"] is None

    for bad in ("-1", "0", "1.234", "lots", True):
        refused = api.put("/budget", json={"cap": bad, "stop_at_cap": True}, token=token)
        assert refused.status_code == 422 and "cap" in refused.json["error"]["fields"], bad
    missing = api.put("/budget", json={"cap": "5"}, token=token)
    assert missing.status_code == 422 and "stop_at_cap" in missing.json["error"]["fields"]

    # another user's budget is not for a user token; an admin reads anyone's
    other = api.token(make_user())
    assert api.get(f"/budget?user_id={pat.id}", token=other).status_code == 403
    admin = api.token(make_user(admin=True), "admin")
    api.put("/budget", json={"cap": "7", "stop_at_cap": True}, token=token)
    read = api.get(f"/budget?user_id={pat.id}", token=admin)
    assert read.status_code == 200 and read.json["cap_minor"] == 700
    assert api.get("/budget?user_id=999999", token=admin).status_code == 404
    # setting is the user's own: admin and platform tokens may not
    assert (
        api.put("/budget", json={"cap": "1", "stop_at_cap": True}, token=admin).status_code == 403
    )


def test_can_deploy_refuses_at_the_cap_in_as_many_statements(app, api, make_user):
    """The budget is read in can-deploy's one account statement: a cap adds no query."""
    pat = make_user("pat@example.com")
    platform = api.token(make_user(admin=True), "platform")
    body = {"user_id": pat.id, "kind": "vm", "cpu_cores": 1}
    api.post("/can-deploy", json=body, token=platform)  # the price catalogue is cached
    with app.app_context(), counting() as before:
        first = api.post("/can-deploy", json=body, token=platform)
    assert first.json["reason"] == "card_required"
    # 0.05 an hour for the rest of the period is more than a cap of 0.01
    api.put("/budget", json={"cap": "0.01", "stop_at_cap": True}, token=api.token(pat))
    with app.app_context(), counting() as after:
        refused = api.post("/can-deploy", json=body, token=platform)
    assert (refused.json["allowed"], refused.json["reason"]) == (False, "budget_would_exceed")
    assert refused.json["required_minor"] > 1
    assert len(after) == len(before)
    # only telling: allowed by the budget, refused for the card as before
    api.put("/budget", json={"cap": "0.01", "stop_at_cap": False}, token=api.token(pat))
    assert api.post("/can-deploy", json=body, token=platform).json["reason"] == "card_required"
