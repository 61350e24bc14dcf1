"""Who is an operator: the caller that may read `/metrics` and the details of `/ready`.

With QUERN_METRICS_TOKEN set, a request must carry `Authorization: Bearer <that token>` (what
Prometheus sends with its `authorization` scrape option), compared in constant time. Unset, only
a client on this machine (loopback) is one, and only if no proxy forwarded the request: a
reverse proxy on the same host would otherwise make every client on the Internet look local.
Checked without the database, so the details of `/ready` stay readable while it is down.
"""

import hmac
from ipaddress import ip_address

from starlette.requests import HTTPConnection

from api.errors import Forbidden, Unauthorized
from api.settings import get_api_settings

# A proxy adds one of these; Prometheus, curl and the tests on this machine send none.
_PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip")


def _is_local(request: HTTPConnection) -> bool:
    if request.client is None or any(name in request.headers for name in _PROXY_HEADERS):
        return False
    try:
        return ip_address(request.client.host).is_loopback
    except ValueError:  # not an address (an ASGI test client's "testclient")
        return False


def _has_token(request: HTTPConnection, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )


def is_operator(request: HTTPConnection) -> bool:
    token = get_api_settings().metrics_token
    if token is None:
        return _is_local(request)
    return _has_token(request, token.get_secret_value())


async def require_operator(request: HTTPConnection) -> None:
    """A dependency: 401 without the token (403 from afar when there is none to send)."""
    if is_operator(request):
        return
    if get_api_settings().metrics_token is None:
        raise Forbidden("Only from this machine, unless QUERN_METRICS_TOKEN is set")
    raise Unauthorized("Send 'Authorization: Bearer <QUERN_METRICS_TOKEN>'")
