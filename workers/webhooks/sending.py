"""One webhook attempt: check the URL, sign the body, POST it to the checked address.

The SSRF guard (common/webhook_guard.py) resolves the host once; the request then goes to that
address, naming the host in the Host header and in TLS (SNI and the certificate check), so
the name is never resolved again. Redirects are never followed, proxies from the environment
are ignored, the whole attempt has one time limit and at most MAX_ANSWER_BYTES of the answer
are read.
"""

import asyncio
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

from common import webhook_guard
from common.webhook_guard import Resolver, Target

log = logging.getLogger(__name__)

USER_AGENT = "Quern-Webhooks/1.0 (+https://www.standardwebhooks.com)"
MAX_ANSWER_BYTES = 64 * 1024
SHOWN_ANSWER_CHARS = 200  # of a failed answer, in the delivery log


@dataclass(frozen=True)
class Result:
    """What came of an attempt: a status code, or an error (refused, no answer, timeout)."""

    status_code: int | None
    error: str | None
    latency_ms: float
    retry_after_s: float | None = None  # from a 429's or 503's Retry-After

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def signed_headers(secret: str, webhook_id: str, body: str) -> dict[str, str]:
    """Standard Webhooks headers: the id, this attempt's timestamp, `v1,<base64 HMAC>`."""
    now = datetime.fromtimestamp(int(time.time()), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def send(
    url: str,
    body: str,
    headers: dict[str, str],
    timeout_s: float,
    resolve: Resolver = socket.getaddrinfo,
) -> Result:
    """POST `body` to `url` if the guard allows it, all within `timeout_s`."""
    started = time.perf_counter()

    def result(status_code: int | None, error: str | None, **extra: float | None) -> Result:
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        return Result(status_code, error, latency_ms, **extra)

    try:
        target = webhook_guard.check(url, resolve=resolve, timeout_s=timeout_s)
        left_s = timeout_s - (time.perf_counter() - started)
        response, answer = asyncio.run(_post(target, body, headers, left_s))
        code = response.status_code
        # Inside the try: whatever the receiver sends, this is an attempt to record.
        retry_after = _retry_after_s(response) if code in (429, 503) else None
    except webhook_guard.RefusedUrl as exc:
        return result(None, f"Refused: {exc}")
    except TimeoutError:
        return result(None, f"No answer within {timeout_s:g}s")
    except httpx.HTTPError as exc:
        return result(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    except Exception as exc:  # still an attempt to log and retry, not a lost one
        log.exception("a webhook attempt failed unexpectedly")
        return result(None, f"Unexpected error: {type(exc).__name__}")
    if 200 <= code < 300:
        return result(code, None)
    if 300 <= code < 400:
        location = response.headers.get("location", "")[:500]
        return result(code, f"HTTP {code}: redirects are not followed (to {location!r})")
    shown = answer[:SHOWN_ANSWER_CHARS].decode(errors="replace").replace("\x00", "")
    return result(code, f"HTTP {code}: {shown}".rstrip(": "), retry_after_s=retry_after)


async def _post(
    target: Target, body: str, headers: dict[str, str], limit_s: float
) -> tuple[httpx.Response, bytes]:
    async with asyncio.timeout(limit_s):
        async with httpx.AsyncClient(
            trust_env=False, follow_redirects=False, timeout=max(limit_s, 0.001)
        ) as client:
            request = pinned(client, "POST", target, content=body.encode(), headers=headers)
            response = await client.send(request, stream=True)
            answer = b""
            try:
                async for chunk in response.aiter_raw():
                    answer += chunk
                    if len(answer) >= MAX_ANSWER_BYTES:
                        break
            finally:
                await response.aclose()
            return response, answer[:MAX_ANSWER_BYTES]


def pinned(
    client: httpx.Client | httpx.AsyncClient,
    method: str,
    target: Target,
    *,
    content: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Request:
    """A request to the target's checked address, naming its host in the Host header and in
    TLS (the certificate must be the host's, though the connection goes to the address)."""
    url = httpx.URL(target.url)
    extensions = {"sni_hostname": url.host} if target.scheme == "https" else {}
    return client.build_request(
        method,
        url.copy_with(host=target.address),
        content=content,
        headers={**(headers or {}), "host": url.netloc.decode("ascii")},
        extensions=extensions,
    )


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (ASCII digits, or an HTTP date); None for anything else. Never
    raises: the receiver writes it. (str.isdigit() alone accepts "²", which float() refuses.)"""
    value = response.headers.get("retry-after", "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, OverflowError):  # TypeError: a date with no time zone
        return None
