"""The web console: `/console`, one page that calls this API as any client does.

The page is three committed files (api/console/: HTML, a JavaScript module, a stylesheet): no
build step, nothing fetched from elsewhere. It holds the signed-in user's token in memory only
(a reload signs out), so no cookie reaches the API and a script could find no token in
storage. Model output is untrusted: the script renders it as text, never as HTML, and a strict
Content-Security-Policy lets the page run only its own script.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

router = APIRouter(prefix="/console", include_in_schema=False)

ASSETS = Path(__file__).resolve().parent.parent / "console"
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# Only this origin's script and style; images from this origin or made in the page (blob:,
# the file outputs it fetched with the token); requests to this API only; never in a frame.
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_bodies = {name: (ASSETS / name).read_bytes() for name in CONTENT_TYPES}


@router.get("")
def console() -> Response:
    """The page; everything after `#` is the console's own route."""
    return _asset("index.html")


@router.get("/")
def console_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=308)


@router.get("/{name}")
def asset(name: str) -> Response:
    """The script and the stylesheet; any other name is 404."""
    if name not in CONTENT_TYPES or name == "index.html":
        return Response(status_code=404)
    return _asset(name)


def _asset(name: str) -> Response:
    return Response(_bodies[name], media_type=CONTENT_TYPES[name], headers=HEADERS)
