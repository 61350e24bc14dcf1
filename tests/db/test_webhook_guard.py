"""The SSRF guard: what a webhook URL may point at, checked without a network."""

import ipaddress
import socket
import threading
import time
from typing import Any

import pytest

from common.webhook_guard import RefusedUrl, check, refusal


def resolver(table: dict[str, list[str]]) -> Any:
    """A getaddrinfo that knows only `table` (name -> addresses)."""

    def resolve(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in table[host]
        ]

    return resolve


# Written out by hand, not derived from `ipaddress` (whose classification changed with
# CVE-2024-4032): every one of these must be refused.
UNSPECIFIED = "0.0.0.0"  # noqa: S104 - an address to refuse, not to bind
REFUSED = [
    UNSPECIFIED, "0.1.2.3", "10.0.0.1", "10.255.255.255", "100.64.0.1", "100.127.255.254",
    "127.0.0.1", "127.1.2.3", "169.254.0.1", "169.254.169.254", "172.16.0.1", "172.31.255.255",
    "192.0.0.1", "192.0.0.8", "192.0.0.170", "192.0.2.1", "192.88.99.1", "192.168.1.1",
    "198.18.0.1", "198.19.255.255", "198.51.100.1", "203.0.113.1", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "100.100.100.200", "168.63.129.16",
    "::", "::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::127.0.0.1",
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "100::1", "2001::1",
    "2001:2::1", "2001:db8::1", "2002:7f00:1::1", "2002:a9fe:a9fe::1", "3fff::1", "fc00::1",
    "fd00:ec2::254", "fe80::1", "febf::1", "fec0::1", "ff02::1", "ff05::1:3",
]  # fmt: skip
ALLOWED = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_an_allowed_network_opens_private_addresses_but_never_cloud_metadata() -> None:
    allowed = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("169.254.0.0/16")]
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("169.254.1.1"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) is not None
    assert "metadata" in str(refusal(ipaddress.ip_address("169.254.169.254"), allowed))
    assert "metadata" in str(refusal(ipaddress.ip_address("::ffff:169.254.169.254"), allowed))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1 is a loopback address"),
        ("http://10.1.2.3:8080/hook", "10.1.2.3 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::1]:9000/", "::1 is a loopback address"),
        ("https://[fd00:ec2::254]/", "cloud metadata"),
        ("http://2130706433/", "127.0.0.1 is a loopback address"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
        ("http://internal.example/", "internal.example resolves to 10.0.0.7"),
        ("http://mixed.example/", "mixed.example resolves to 192.168.0.1"),
        ("ftp://hooks.example/", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http:///nohost", "no host"),
        ("http://[::1/", "not a valid URL"),
        ("http://hooks.example:99999/", "not a valid URL"),
        ("http://nowhere.invalid/", "does not resolve"),
    ],
)
def test_check_refuses_with_a_reason(url: str, reason: str) -> None:
    names = {"internal.example": ["10.0.0.7"], "mixed.example": ["93.184.215.14", "192.168.0.1"]}
    with pytest.raises(RefusedUrl, match=reason):
        check(url, allowed=[], resolve=resolver(names) if "example" in url else socket.getaddrinfo)


def test_localhost_is_refused_through_the_real_resolver() -> None:
    with pytest.raises(RefusedUrl, match=r"localhost resolves to .* loopback"):
        check("http://localhost:8000/hook", allowed=[])


def test_check_resolves_once_and_returns_the_address_to_connect_to() -> None:
    calls: list[str] = []
    resolve = resolver({"hooks.example": ["93.184.215.14"]})

    def counting(host: str, port: int, **kwargs: Any) -> Any:
        calls.append(host)
        return resolve(host, port, **kwargs)

    target = check("https://Hooks.Example/path?q=1", allowed=[], resolve=counting)
    assert calls == ["hooks.example"]
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example", 443)
    assert target.address == "93.184.215.14"
    assert target.url == "https://Hooks.Example/path?q=1"


def test_a_resolver_that_hangs_is_given_up_on_quickly() -> None:
    def hangs(*_: Any, **__: Any) -> Any:
        time.sleep(5)

    started = time.monotonic()
    with pytest.raises(RefusedUrl, match=r"did not resolve within 0\.2s"):
        check("http://slow.example/", allowed=[], resolve=hangs, timeout_s=0.2)
    assert time.monotonic() - started < 1


def test_names_that_hang_do_not_delay_the_check_of_another_name() -> None:
    """Timed-out lookups keep their threads until the resolver returns; they must not hold
    up other checks (with a shared pool of threads, a few of them blocked every other one)."""
    release = threading.Event()
    answers = resolver({"fast.example": ["93.184.215.14"]})

    def resolve(host: str, port: int, **kwargs: Any) -> Any:
        if host == "slow.example":
            release.wait(30)
        return answers(host, port, **kwargs)

    refused: list[str] = []

    def slow_check() -> None:
        try:
            check("http://slow.example/", allowed=[], resolve=resolve, timeout_s=0.2)
        except RefusedUrl as exc:
            refused.append(str(exc))

    try:
        slow = [threading.Thread(target=slow_check) for _ in range(20)]
        for thread in slow:
            thread.start()
        for thread in slow:
            thread.join()
        # All have given up, their lookups still hanging.
        assert refused == ["slow.example did not resolve within 0.2s"] * 20
        started = time.monotonic()
        target = check("http://fast.example/", allowed=[], resolve=resolve, timeout_s=2)
        assert target.address == "93.184.215.14"
        assert time.monotonic() - started < 0.5
    finally:
        release.set()


def test_a_mistyped_allowlist_stops_the_process_at_start() -> None:
    """`10.0.0.5/8` names a host, not a network: refused when the settings load (the API and
    workers load them at start), never a 500 on each webhook."""
    import subprocess
    import sys

    env = {"QUERN_WEBHOOK_ALLOWED_NETWORKS": "10.0.0.5/8", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", "import workers.celery_app"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "has host bits set" in result.stderr
