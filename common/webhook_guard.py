"""Where a webhook may go: the SSRF guard, used by the API when a prediction is created and by
the webhooks worker before every attempt.

A URL passes if it is http(s) and its host resolves (once) only to public addresses, or to
networks the operator allows (QUERN_WEBHOOK_ALLOWED_NETWORKS, e.g. "10.0.0.0/8"); cloud
metadata addresses are refused even then. The sender connects to the checked address itself,
never resolving the name again, so a DNS answer that changes in between (DNS rebinding)
cannot move it. In `common` because the API and the workers both import it.

The deny list is explicit, not `ipaddress`'s `is_global` alone: that classification changed
(CVE-2024-4032) and may change again; `is_global` is checked too, after the list.
"""

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list[tuple[Any, ...]]]  # socket.getaddrinfo's signature

_DENIED = [
    (ipaddress.ip_network(network), reason)
    for network, reason in (
        ("0.0.0.0/8", "an unspecified address"),
        ("10.0.0.0/8", "a private address"),
        ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("172.16.0.0/12", "a private address"),
        ("192.0.0.0/24", "an IETF protocol assignment"),
        ("192.0.2.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("192.168.0.0/16", "a private address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("::ffff:0:0/96", "an IPv4-mapped address"),
        ("::/8", "a reserved address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("64:ff9b:1::/48", "a NAT64 address"),
        ("100::/64", "a discard-only address"),
        ("2001::/23", "an IETF protocol assignment (Teredo, benchmarking...)"),
        ("2001:db8::/32", "a documentation address"),
        ("2002::/16", "a 6to4 address"),
        ("3fff::/20", "a documentation address"),
        ("fc00::/7", "a unique local (private) address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
    )
]
# Cloud instance metadata services (AWS, GCP, Azure, OpenStack; AWS over IPv6; Alibaba; Azure's
# wire server; Oracle): refused even inside an allowed network.
METADATA = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",
        "fd00:ec2::254",
        "100.100.100.200",
        "168.63.129.16",
        "192.0.0.192",
    )
)


class GuardSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QUERN_WEBHOOK_", extra="ignore")

    # Networks webhooks may reach although they are not public (a receiver on the private
    # network, a test's loopback receiver): comma-separated, e.g. "127.0.0.1/32,10.0.0.0/8".
    allowed_networks: Annotated[list[Network], NoDecode] = Field(default_factory=list)
    # A name that takes longer to resolve is refused (an offline resolver must not hang a create).
    resolve_timeout_s: float = Field(default=2.0, gt=0)

    @field_validator("allowed_networks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [ipaddress.ip_network(part.strip()) for part in value.split(",") if part.strip()]
        return value


@lru_cache
def get_guard_settings() -> GuardSettings:
    return GuardSettings()


class RefusedUrl(ValueError):
    """The URL may not be a webhook; the message says why and is safe to show its owner."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: send to `address`, naming `host` (Host header, TLS)."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def refusal(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why `address` may not receive webhooks, or None if it may."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if address in METADATA or mapped in METADATA:
        return f"{address} is a cloud metadata address"
    if any(address in network for network in allowed):
        return None
    for network, reason in _DENIED:
        if address in network:
            return f"{address} is {reason}"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


# getaddrinfo cannot be interrupted: a lookup that times out keeps its thread until the resolver
# gives up (10-30 s). So each lookup runs on its own thread, never queued behind another (a shared
# pool would let one slowly resolving name starve every other check); this only bounds how many
# may be stuck at once.
MAX_LOOKUPS = 64
_lookups = threading.BoundedSemaphore(MAX_LOOKUPS)


def check(
    url: str,
    *,
    allowed: Sequence[Network] | None = None,
    resolve: Resolver = socket.getaddrinfo,
    timeout_s: float | None = None,
) -> Target:
    """The checked target of `url`, or RefusedUrl. Allowed networks and the resolve timeout
    come from the settings unless given."""
    settings = get_guard_settings()
    allowed = settings.allowed_networks if allowed is None else allowed
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError as exc:
        raise RefusedUrl(f"not a valid URL: {exc}") from None
    if scheme not in ("http", "https"):
        raise RefusedUrl("only http and https URLs are allowed")
    if not host:
        raise RefusedUrl("the URL has no host")
    port = port or (443 if scheme == "https" else 80)
    addresses = _resolve(host, port, resolve, timeout_s or settings.resolve_timeout_s)
    for address in addresses:
        reason = refusal(address, allowed)
        if reason is not None:
            shown = "" if str(address) == host else f"{host} resolves to "
            raise RefusedUrl(f"{shown}{reason}")
    return Target(url, scheme, host, port, str(addresses[0]))


def _resolve(host: str, port: int, resolve: Resolver, timeout_s: float) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]  # a literal address: nothing to resolve
    except ValueError:
        pass
    try:
        infos = _lookup(resolve, host, port, timeout_s)
    except TimeoutError:
        raise RefusedUrl(f"{host} did not resolve within {timeout_s:g}s") from None
    except (OSError, UnicodeError) as exc:
        raise RefusedUrl(f"{host} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise RefusedUrl(f"{host} does not resolve")
    return list(dict.fromkeys(addresses))


def _lookup(resolve: Resolver, host: str, port: int, timeout_s: float) -> list[tuple[Any, ...]]:
    """`resolve(host, port)` on a thread of its own, or TimeoutError after `timeout_s` (waiting
    for a free slot included). A timed-out lookup's thread finishes on its own, then frees its
    slot."""
    deadline = time.monotonic() + timeout_s
    if not _lookups.acquire(timeout=timeout_s):
        raise TimeoutError
    lookup: Future[list[tuple[Any, ...]]] = Future()

    def run() -> None:
        try:
            lookup.set_result(resolve(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:
            lookup.set_exception(exc)
        finally:
            _lookups.release()

    try:
        threading.Thread(target=run, name="webhook-dns", daemon=True).start()
    except BaseException:
        _lookups.release()
        raise
    return lookup.result(timeout=max(deadline - time.monotonic(), 0))
