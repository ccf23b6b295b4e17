"""The sandbox pages: plain HTML forms, no JavaScript. Card numbers are typed here (as on
Stripe's hosted pages), never on the portal's."""

from __future__ import annotations

from decimal import Decimal
from html import escape

from aiohttp import web

from .objects import TEST_MODE_BANNER

ZERO_DECIMAL = {
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
}
THREE_DECIMAL = {"bhd", "jod", "kwd", "omr", "tnd"}

TEST_CARDS = (
    ("4242 4242 4242 4242", "succeeds"),
    ("4000 0000 0000 0341", "is saved, but every charge is declined"),
    ("4000 0027 6000 3184", "asks for 3-D Secure authentication"),
    ("4000 0000 0000 0259", "succeeds, then the payment is disputed"),
)

STYLE = """
body{font-family:system-ui,sans-serif;background:#f6f8fa;color:#1f2328;margin:0}
main{max-width:28rem;margin:3rem auto;background:#fff;border:1px solid #d0d7de;
border-radius:8px;padding:1.5rem 2rem}
.banner{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:.4rem .6rem;
font-size:.85rem;margin-bottom:1rem}
label{display:block;margin:.8rem 0 .2rem;font-size:.9rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem;border:1px solid #d0d7de;
border-radius:6px}
.row{display:flex;gap:1rem}.row>div{flex:1}
button{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem;border:0;border-radius:6px;
background:#0969da;color:#fff;cursor:pointer}
button.secondary{background:#eaeef2;color:#1f2328}
.error{background:#ffebe9;border:1px solid #ff8182;border-radius:6px;padding:.5rem;
margin:1rem 0}
.amount{font-size:1.6rem;font-weight:600;margin:.2rem 0 1rem}
small,.cards{color:#59636e;font-size:.8rem}
"""


def format_amount(amount: int, currency: str) -> str:
    currency = currency.lower()
    digits = 0 if currency in ZERO_DECIMAL else 3 if currency in THREE_DECIMAL else 2
    return f"{Decimal(amount).scaleb(-digits):.{digits}f} {currency.upper()}"


def page(title: str, body: str, *, status: int = 200) -> web.Response:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        # No icon: browsers would otherwise ask for /favicon.ico (an API path: 401).
        "<link rel=icon href='data:,'>"
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>"
        f"<div class=banner>{escape(TEST_MODE_BANNER)}</div>{body}</main></body></html>"
    )
    return web.Response(
        text=html,
        content_type="text/html",
        status=status,
        headers={
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY",
        },
    )


def card_form(
    *,
    action: str,
    heading: str,
    amount_line: str,
    button: str,
    error: str = "",
    cancel_url: str | None = None,
    values: dict | None = None,
) -> str:
    values = values or {}
    cards = "".join(f"<li><code>{escape(n)}</code> {escape(what)}</li>" for n, what in TEST_CARDS)
    cancel = f"<p><a href='{escape(cancel_url)}'>Cancel and go back</a></p>" if cancel_url else ""
    return f"""
<h1>{escape(heading)}</h1>
{f"<p class=amount>{escape(amount_line)}</p>" if amount_line else ""}
{f"<p class=error role=alert>{escape(error)}</p>" if error else ""}
<form method=post action="{escape(action)}">
  <label for=number>Card number</label>
  <input id=number name=number inputmode=numeric autocomplete=cc-number
         placeholder="4242 4242 4242 4242" value="{escape(values.get("number", ""))}" required>
  <div class=row>
    <div><label for=exp>Expiry (MM / YY)</label>
      <input id=exp name=exp autocomplete=cc-exp value="{escape(values.get("exp", "12 / 34"))}"
             required></div>
    <div><label for=cvc>CVC</label>
      <input id=cvc name=cvc inputmode=numeric autocomplete=cc-csc
             value="{escape(values.get("cvc", "123"))}" required></div>
  </div>
  <label for=name>Name on card</label>
  <input id=name name=name autocomplete=cc-name value="{escape(values.get("name", ""))}">
  <button type=submit>{escape(button)}</button>
</form>
{cancel}
<p class=cards>Test cards (any future expiry, any CVC):</p><ul class=cards>{cards}</ul>
"""


def authenticate_form(*, action: str, what: str) -> str:
    return f"""
<h1>3-D Secure authentication</h1>
<p>Your bank asks you to confirm {escape(what)}.</p>
<form method=post action="{escape(action)}">
  <button type=submit name=result value=complete>Complete authentication</button>
  <button type=submit name=result value=fail class=secondary>Fail authentication</button>
</form>
"""


def message(
    title: str,
    text: str,
    *,
    link: str | None = None,
    link_text: str = "Continue",
    status: int = 200,
) -> web.Response:
    body = f"<h1>{escape(title)}</h1><p>{escape(text)}</p>"
    if link:
        body += f"<p><a href='{escape(link)}'>{escape(link_text)}</a></p>"
    return page(title, body, status=status)
