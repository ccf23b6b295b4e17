"""Invoice PDFs: a finalized invoice's plain-data snapshot rendered with WeasyPrint.

The template sees only the snapshot (no app, request or database), autoescaped. WeasyPrint
may read only files under portal/static; any other URL (file:, http:, data:, ...) stops the
render, so a PDF never silently leaves out a resource or reaches outside.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from jinja2 import Environment, FileSystemLoader
from weasyprint import HTML
from weasyprint.urls import FatalURLFetchingError, URLFetcher, URLFetcherResponse, path2url

PORTAL_DIR = Path(__file__).resolve().parents[1]
STATIC_DIR = PORTAL_DIR / "static"
TEMPLATE_DIR = PORTAL_DIR / "templates" / "pdf"
BASE_URL = path2url(STATIC_DIR / "pdf")  # a directory URL: templates link "invoice_v1.css"
TEMPLATE_VERSIONS = (1,)
REQUIRED_KEYS = (
    "template_version",
    "number",
    "status",
    "issued_at",
    "period_start",
    "period_end",
    "seller",
    "customer",
    "currency",
    "lines",
    "subtotal",
    "credits",
    "total",
    "amount_paid",
    "amount_due",
    "payments",
)


class RefusedURL(ValueError):
    """A URL outside portal/static that a PDF template or stylesheet asked for."""


def static_path(url: str) -> Path:
    """The file under portal/static that ``url`` names; RefusedURL for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise RefusedURL(f"only our static files may be fetched, not {url[:200]!r}")
    try:
        path = Path(url2pathname(parts.path)).resolve(strict=True)
    except (OSError, RuntimeError):
        raise RefusedURL(f"no such static file: {url[:200]!r}") from None
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        raise RefusedURL(f"only our static files may be fetched, not {url[:200]!r}")
    return path


class StaticFetcher(URLFetcher):
    """Serves files under portal/static and refuses everything else; a refusal is fatal."""

    def __init__(self) -> None:
        super().__init__(fail_on_errors=True)

    def fetch(self, url, headers=None):
        path = static_path(url)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(
            path2url(path), body=path.read_bytes(), headers={"Content-Type": content_type}
        )


FETCHER = StaticFetcher()


def is_nonzero(amount_text: str | None) -> bool:
    """Snapshot money is formatted text: this tells "$0.40" from "$0.00" without parsing."""
    return any(c in "123456789" for c in str(amount_text or ""))


_env = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    auto_reload=False,
)
_env.tests["nonzero"] = is_nonzero


def template_version(snapshot: dict) -> int:
    version = snapshot.get("template_version")
    if type(version) is not int or version not in TEMPLATE_VERSIONS:  # not True, 1.0, "1"
        raise ValueError(f"unknown invoice template version {version!r}")
    return version


def render_html(snapshot: dict) -> str:
    """The invoice's HTML, from the template its snapshot names."""
    missing = [key for key in REQUIRED_KEYS if key not in snapshot]
    if missing:
        raise ValueError(f"the invoice snapshot lacks {', '.join(missing)}")
    template = _env.get_template(f"invoice_v{template_version(snapshot)}.html")
    return template.render(inv=snapshot)


def render_pdf_bytes(snapshot: dict) -> bytes:
    """The invoice's PDF. The same snapshot gives the same bytes."""
    html = render_html(snapshot)
    try:
        return HTML(string=html, base_url=BASE_URL, url_fetcher=FETCHER).write_pdf()
    except FatalURLFetchingError as exc:  # a BaseException in WeasyPrint: make it an error
        raise RefusedURL(str(exc.__cause__ or exc)) from exc
