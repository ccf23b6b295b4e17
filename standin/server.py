"""The stand-in's aiohttp application: our routes first, then every localstripe route."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import pickle
import socket
import time
import warnings
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode

# localstripe registers plain-function handlers, which aiohttp 3.9+ calls deprecated.
warnings.filterwarnings("ignore", "Bare functions are deprecated", DeprecationWarning)

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from localstripe import resources as ls  # noqa: E402
from localstripe import server as ls_server  # noqa: E402
from localstripe import webhooks as ls_webhooks  # noqa: E402
from localstripe.errors import UserError  # noqa: E402

from . import objects, pages  # noqa: E402

log = logging.getLogger("standin")
LOOPBACK = "127.0.0.1"
DEFAULT_EVENTS = (
    "checkout.session.completed",
    "checkout.session.expired",
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "setup_intent.succeeded",
    "setup_intent.setup_failed",
    "charge.refunded",
    "charge.dispute.created",
)
RETRY_DELAYS = (1, 2, 4, 8, 16, 32, 60, 120)  # seconds between delivery attempts


@dataclass
class Settings:
    port: int = 8420
    webhook_url: str | None = None
    webhook_secret: str | None = None
    events: tuple[str, ...] | None = DEFAULT_EVENTS  # None: every event
    state_file: str | None = None
    delivery_delay: float = 0.2
    retry_delays: tuple[float, ...] = RETRY_DELAYS


# -- state: localstripe pickles its whole store to /tmp on every write; we keep it in memory
# and, with --state-file, write it after each changing request (so a demo survives restarts).
@dataclass
class _State:
    path: str | None = None
    dirty: bool = False


STATE = _State()


def _mark_dirty(_store) -> None:
    STATE.dirty = True


ls.Store.dump_to_disk = _mark_dirty
ls.Store.try_load_from_disk = lambda _store: None


def load_state(path: str) -> None:
    try:
        with open(path, "rb") as f:
            saved = pickle.load(f)
    except FileNotFoundError:
        return
    dict.update(ls.store, saved)  # no per-item dump
    log.info("loaded %d objects from %s", len(saved), path)


def save_state() -> None:
    if not STATE.path or not STATE.dirty:
        return
    tmp = f"{STATE.path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        pickle.dump(dict(ls.store), f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, STATE.path)
    STATE.dirty = False


# -- idempotency keys -----------------------------------------------------------------------
@dataclass
class _Saved:
    fingerprint: str
    status: int | None = None  # None while the first request is still running
    body: bytes = b""
    at: float = field(default_factory=time.time)


_IDEMPOTENCY: dict[tuple[str, str], _Saved] = {}
IDEMPOTENCY_TTL = 24 * 3600


def _error(status: int, message: str, **extra) -> web.Response:
    return ls_server.json_response({"error": {"message": message, **extra}}, status=status)


@web.middleware
async def idempotency_middleware(request: web.Request, handler):
    """Stripe's idempotent requests: the same key and parameters replay the first answer
    (declines included); other parameters under the same key are refused."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key or not request.path.startswith("/v1/"):
        return await handler(request)
    body = await request.read()
    params = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    fingerprint = hashlib.sha256(json.dumps([request.path, params]).encode()).hexdigest()
    slot = (ls_server.get_api_key(request) or "", key)
    now = time.time()
    for stale in [k for k, v in _IDEMPOTENCY.items() if now - v.at > IDEMPOTENCY_TTL]:
        del _IDEMPOTENCY[stale]
    saved = _IDEMPOTENCY.get(slot)
    if saved is not None:
        if saved.fingerprint != fingerprint:
            return _error(
                400,
                "Keys for idempotent requests can only be used with the same "
                "parameters they were first used with. Try using a key other than "
                f"'{key}' if you meant to execute a different request.",
                type="idempotency_error",
            )
        if saved.status is None:
            return _error(
                409,
                "There is currently another in-progress request using this "
                "idempotency key. Try again later.",
                type="idempotency_error",
                code="idempotency_key_in_use",
            )
        return web.Response(
            body=saved.body,
            status=saved.status,
            content_type="application/json",
            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key},
        )
    _IDEMPOTENCY[slot] = _Saved(fingerprint)
    try:
        response = await handler(request)
    except BaseException:
        _IDEMPOTENCY.pop(slot, None)
        raise
    if (
        response.status in (401, 429)
        or response.status >= 500
        or not isinstance(response, web.Response)
    ):
        _IDEMPOTENCY.pop(slot, None)
    else:
        _IDEMPOTENCY[slot] = _Saved(fingerprint, response.status, response.body or b"")
    response.headers["Idempotency-Key"] = key
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """The API needs a secret key (localstripe's rule); sandbox pages are for browsers."""
    if request.path.startswith(("/checkout/", "/sandbox/")) or request.path == "/health":
        return await handler(request)
    return await ls_server.auth_middleware(request, handler)


@web.middleware
async def state_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    finally:
        if request.method in ("POST", "DELETE"):
            save_state()


# -- webhook delivery (replaces localstripe's single attempt) -------------------------------
def sign(payload: bytes, secret: str, timestamp: int) -> str:
    signature = hmac.new(secret.encode(), b"%d." % timestamp + payload, hashlib.sha256)
    return f"t={timestamp},v1={signature.hexdigest()}"


async def _deliver_event(event) -> None:
    await asyncio.sleep(SETTINGS.delivery_delay)
    payload = json.dumps(event._export(), sort_keys=True).encode()
    for hook in list(ls_webhooks._webhooks.values()):
        if hook.events is not None and event.type not in hook.events:
            continue
        asyncio.ensure_future(_deliver_one(hook.url, hook.secret, event.id, event.type, payload))


async def _deliver_one(
    url: str, secret: str, event_id: str, event_type: str, payload: bytes
) -> None:
    delays = (0, *SETTINGS.retry_delays)
    for attempt, delay in enumerate(delays, start=1):
        await asyncio.sleep(delay)
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": sign(payload, secret, int(time.time())),
            "User-Agent": "standin-webhooks",
        }
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
                async with http.post(url, data=payload, headers=headers) as response:
                    if 200 <= response.status < 300:
                        log.info("webhook %s %s delivered to %s", event_type, event_id, url)
                        return
                    problem = f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        log.warning(
            "webhook %s %s to %s failed (attempt %d): %s",
            event_type,
            event_id,
            url,
            attempt,
            problem,
        )
    log.error("webhook %s %s to %s given up", event_type, event_id, url)


ls_webhooks._send_webhook = _deliver_event
SETTINGS = Settings()


# -- API handlers ---------------------------------------------------------------------------
async def _data(request: web.Request) -> dict:
    data = await ls_server.get_post_data(request) or {}
    data.pop("expand", None)
    return data


def _query(request: web.Request) -> dict:
    data = ls_server.unflatten_data(request.query)
    data.pop("expand", None)
    return data


def _json(obj) -> web.Response:
    return ls_server.json_response(obj._export())


async def api_create_payment_intent(request):
    return _json(objects.create_payment_intent(await _data(request)))


async def api_confirm_payment_intent(request):
    data = await _data(request)
    intent = ls.PaymentIntent._api_retrieve(request.match_info["id"])
    off_session = ls.try_convert_to_bool(data.pop("off_session", None)) is True
    objects.confirm_payment_intent(
        intent,
        off_session=off_session,
        return_url=data.pop("return_url", None),
        payment_method=data.pop("payment_method", None),
    )
    return _json(intent)


async def api_list_payment_intents(request):
    return _json(objects.list_payment_intents(**_query(request)))


async def api_confirm_setup_intent(request):
    data = await _data(request)
    return _json(objects.api_confirm_setup_intent(request.match_info["id"], **data))


async def api_create_refund(request):
    return _json(objects.create_refund(await _data(request)))


async def api_retrieve_dispute(request):
    return _json(objects.Dispute._api_retrieve(request.match_info["id"]))


async def config_dispute(request):
    return _json(objects.open_dispute(**await _data(request)))


async def api_create_session(request):
    return _json(objects.CheckoutSession(**await _data(request)))


async def api_retrieve_session(request):
    return _json(objects.retrieve_session(request.match_info["id"]))


async def api_list_sessions(request):
    return _json(objects.list_checkout_sessions(**_query(request)))


async def api_expire_session(request):
    session = objects.retrieve_session(request.match_info["id"])
    session._expire()
    return _json(session)


async def config_remove_webhook(request):
    ls_webhooks._webhooks.pop(request.match_info["id"], None)
    return web.Response()


async def health(_request):
    return web.json_response({"ok": True})


# -- sandbox pages --------------------------------------------------------------------------
def _session_form(session, *, error: str = "", values=None) -> web.Response:
    if session.mode == "payment":
        heading = session._line_item_name
        amount = pages.format_amount(session.amount_total, session.currency)
        button = f"Pay {amount}"
    else:
        heading, amount, button = "Save a card", "", "Save card"
    return pages.page(
        heading,
        pages.card_form(
            action=f"/checkout/{session.id}",
            heading=heading,
            amount_line=amount,
            button=button,
            error=error,
            cancel_url=session.cancel_url,
            values=values,
        ),
        status=402 if error else 200,
    )


async def checkout_page(request):
    session = _sandbox_session(request)
    if session.status == "complete":
        return pages.message(
            "Already done",
            "This checkout is complete.",
            link=session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id),
        )
    if session.status == "expired":
        return pages.message(
            "Expired",
            "This checkout has expired.",
            link=session.cancel_url,
            link_text="Go back",
            status=410,
        )
    return _session_form(session, error=request.query.get("error", "")[:200])


async def checkout_submit(request):
    session = _sandbox_session(request)
    if session.status != "open":
        return await checkout_page(request)
    form = await request.post()
    try:
        pm = objects.card_from_form(form)
        target = objects.pay_session(session, pm)
    except UserError as exc:
        message = exc.body.get("error", {}).get("message") or "Your card was declined."
        values = {k: form.get(k, "") for k in ("exp", "cvc", "name")}
        return _session_form(session, error=message, values=values)
    raise web.HTTPSeeOther(target)


def _sandbox_session(request):
    try:
        return objects.retrieve_session(request.match_info["id"])
    except UserError:
        raise web.HTTPNotFound(text="No such checkout session.") from None


def _sandbox_setup_intent(request):
    try:
        intent = ls.SetupIntent._api_retrieve(request.match_info["id"])
    except UserError:
        raise web.HTTPNotFound(text="No such setup intent.") from None
    if not hmac.compare_digest(request.query.get("client_secret", ""), intent.client_secret):
        raise web.HTTPForbidden(text="Wrong client secret.")
    return intent


def _setup_form(request, intent, *, error="", values=None):
    query = urlencode(
        {"client_secret": intent.client_secret, "return_url": request.query.get("return_url", "")}
    )
    return pages.page(
        "Save a card",
        pages.card_form(
            action=f"/sandbox/setup_intents/{intent.id}?{query}",
            heading="Save a card",
            amount_line="",
            button="Save card",
            error=error,
            values=values,
        ),
        status=402 if error else 200,
    )


def _return_to(url: str | None, **params) -> str | None:
    if not url:
        return None
    return url + ("&" if "?" in url else "?") + urlencode(params)


async def setup_intent_page(request):
    intent = _sandbox_setup_intent(request)
    if intent.status == "succeeded":
        return pages.message(
            "Card saved", "This card is saved.", link=request.query.get("return_url") or None
        )
    return _setup_form(request, intent)


async def setup_intent_submit(request):
    intent = _sandbox_setup_intent(request)
    form = await request.post()
    return_url = request.query.get("return_url") or None
    try:
        pm = objects.card_from_form(form)
        intent._return_url = return_url
        objects.confirm_setup_intent(intent, pm)
    except UserError as exc:
        message = exc.body.get("error", {}).get("message") or "Your card was declined."
        return _setup_form(
            request,
            intent,
            error=message,
            values={k: form.get(k, "") for k in ("exp", "cvc", "name")},
        )
    if intent.status == "requires_action":
        raise web.HTTPSeeOther(
            objects.authenticate_url(intent) + "&" + urlencode({"return_url": return_url or ""})
        )
    target = _return_to(
        return_url,
        setup_intent=intent.id,
        setup_intent_client_secret=intent.client_secret,
        redirect_status="succeeded",
    )
    if target:
        raise web.HTTPSeeOther(target)
    return pages.message("Card saved", "Your card is saved. You can close this page.")


def _sandbox_intent(request):
    try:
        intent = objects.retrieve_intent(request.match_info["id"])
    except UserError:
        raise web.HTTPNotFound(text="Nothing to authenticate.") from None
    if not hmac.compare_digest(request.query.get("client_secret", ""), intent.client_secret):
        raise web.HTTPForbidden(text="Wrong client secret.")
    return intent


async def authenticate_page(request):
    intent = _sandbox_intent(request)
    if intent.status != "requires_action":
        return pages.message(
            "Nothing to authenticate", "This payment does not need authentication now."
        )
    what = (
        f"a payment of {pages.format_amount(intent.amount, intent.currency)}"
        if intent.object == "payment_intent"
        else "saving this card"
    )
    return pages.page("Authenticate", pages.authenticate_form(action=request.path_qs, what=what))


async def authenticate_submit(request):
    intent = _sandbox_intent(request)
    form = await request.post()
    succeed = form.get("result") == "complete"
    error = ""
    try:
        objects.authenticate(intent, succeed=succeed)
    except UserError as exc:
        error = exc.body.get("error", {}).get("message") or "Your card was declined."
    session_id = getattr(intent, "_checkout_session", None)
    ok = intent.status == "succeeded"
    if session_id:
        session = objects.retrieve_session(session_id)
        if ok:
            if intent.object == "payment_intent":
                objects.keep_card(session, intent)
            raise web.HTTPSeeOther(session._complete())
        message = error or "Authentication failed. Try again or use another card."
        raise web.HTTPSeeOther(f"/checkout/{session.id}?" + urlencode({"error": message}))
    return_url = request.query.get("return_url") or getattr(intent, "_return_url", None)
    if intent.object == "payment_intent":
        target = _return_to(
            return_url,
            payment_intent=intent.id,
            payment_intent_client_secret=intent.client_secret,
            redirect_status="succeeded" if ok else "failed",
        )
    else:
        target = _return_to(
            return_url,
            setup_intent=intent.id,
            setup_intent_client_secret=intent.client_secret,
            redirect_status="succeeded" if ok else "failed",
        )
    if target:
        raise web.HTTPSeeOther(target)
    return pages.message(
        "Done" if ok else "Not completed",
        "Authentication complete." if ok else (error or "Authentication failed."),
    )


# -- the application ------------------------------------------------------------------------
OUR_ROUTES = (
    ("GET", "/health", health),
    ("POST", "/v1/payment_intents", api_create_payment_intent),
    ("GET", "/v1/payment_intents", api_list_payment_intents),
    ("POST", "/v1/payment_intents/{id}/confirm", api_confirm_payment_intent),
    ("POST", "/v1/setup_intents/{id}/confirm", api_confirm_setup_intent),
    ("POST", "/v1/refunds", api_create_refund),
    ("GET", "/v1/disputes/{id}", api_retrieve_dispute),
    ("POST", "/_config/disputes", config_dispute),
    ("DELETE", "/_config/webhooks/{id}", config_remove_webhook),
    ("POST", "/v1/checkout/sessions", api_create_session),
    ("GET", "/v1/checkout/sessions", api_list_sessions),
    ("GET", "/v1/checkout/sessions/{id}", api_retrieve_session),
    ("POST", "/v1/checkout/sessions/{id}/expire", api_expire_session),
    ("GET", "/checkout/{id}", checkout_page),
    ("POST", "/checkout/{id}", checkout_submit),
    ("GET", "/sandbox/setup_intents/{id}", setup_intent_page),
    ("POST", "/sandbox/setup_intents/{id}", setup_intent_submit),
    ("GET", "/sandbox/authenticate/{id}", authenticate_page),
    ("POST", "/sandbox/authenticate/{id}", authenticate_submit),
)


def build_app() -> web.Application:
    app = web.Application(
        middlewares=[
            idempotency_middleware,
            ls_server.error_middleware,
            auth_middleware,
            state_middleware,
        ]
    )
    taken = set()
    for method, path, handler in OUR_ROUTES:
        app.router.add_route(method, path, handler)
        taken.add((method, path))
    for route in ls_server.app.router.routes():
        key = (route.method, route.resource.canonical)
        if key not in taken:
            app.router.add_route(*key, route.handler)
            taken.add(key)
    app.on_cleanup.append(lambda _app: _save_on_exit())
    return app


async def _save_on_exit() -> None:
    save_state()


def configure(settings: Settings) -> None:
    global SETTINGS
    SETTINGS = settings
    STATE.path = settings.state_file
    if settings.state_file:
        load_state(settings.state_file)
    if settings.webhook_url:
        if not settings.webhook_secret:
            raise SystemExit("--webhook-secret is required with --webhook-url")
        ls_webhooks.register_webhook(
            "portal",
            settings.webhook_url,
            settings.webhook_secret,
            list(settings.events) if settings.events else None,
        )


def bind(port: int) -> socket.socket:
    """A listening socket on 127.0.0.1 only (port 0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, port))
    return sock


def run(settings: Settings) -> None:
    sock = bind(settings.port)
    port = sock.getsockname()[1]
    objects.Sandbox.base_url = f"http://{LOOPBACK}:{port}"
    configure(settings)
    app = build_app()
    print(f"standin listening on http://{LOOPBACK}:{port}", flush=True)
    web.run_app(
        app,
        sock=sock,
        print=None,
        access_log=logging.getLogger("standin.access"),
        access_log_format="%r %s %Tfs",
    )
