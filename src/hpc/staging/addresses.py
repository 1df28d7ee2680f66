"""Which hosts the gateway may fetch from, and URL checks (server-side request forgery defence).

A user-supplied URL makes the gateway open a connection from inside its own network, so every host
name is resolved and EVERY address it resolves to is checked before any connection is made:

- link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, 100.100.100.200, fd00:ec2::254,
  ...) are always refused, whatever the configuration says;
- public (globally routable) addresses are allowed;
- everything else (loopback, private ranges, carrier-grade NAT, reserved ranges) is refused unless a
  network of ``source_allow_networks`` contains it.

IPv4 addresses embedded in IPv6 ones (``::ffff:169.254.169.254``, NAT64, 6to4) are judged as the IPv4
address they carry. The same check runs again at connect time, on the address actually connected to
(:mod:`hpc.staging.http` and :mod:`hpc.staging.s3` pin it into their connection classes), so a
redirect or a DNS answer that changed since the request was accepted cannot reach a refused address.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from collections.abc import Iterable
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

from hpc.staging.errors import SourceError, UnsafeAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Refused even when an allowlist covers them: nothing legitimate is staged from these, and the
# metadata services hand out cloud credentials.
ALWAYS_REFUSED: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network": a connect to 0.0.0.0 reaches the local host
        "169.254.0.0/16",  # IPv4 link-local; 169.254.169.254 is the AWS/GCP/Azure/OpenStack metadata service
        "100.100.100.200/32",  # Alibaba Cloud metadata service
        "192.0.0.192/32",  # Oracle Cloud (classic) metadata service
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, including the 255.255.255.255 broadcast
        "::/128",  # unspecified
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata service over IPv6
        "ff00::/8",  # IPv6 multicast
    )
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_CONTROL = {chr(c) for c in range(0x21)} | {"\x7f"}


def parse_networks(value: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"127.0.0.1/32, 10.0.0.0/8"`` (or a list) -> networks. Raises ValueError on a bad entry."""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in items:
        item = str(item).strip()
        if item:
            networks.append(ipaddress.ip_network(item, strict=False))
    return tuple(networks)


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


@dataclass(frozen=True)
class AddressPolicy:
    """Decides which addresses the gateway may connect to for a user's source or endpoint.

    Attributes:
        allow: Networks admitted although not public (loopback, private ranges). Never widens
            :data:`ALWAYS_REFUSED`.
    """

    allow: tuple[IPNetwork, ...] = ()

    def refusal(self, address: str | IPAddress) -> str | None:
        """Why ``address`` is refused, or None when it may be connected to."""
        if isinstance(address, str):
            address = ipaddress.ip_address(address.split("%", 1)[0])
        judged = _embedded_ipv4(address)
        for candidate in {address, judged}:
            if any(candidate.version == net.version and candidate in net for net in ALWAYS_REFUSED):
                return f"{address} is a link-local, metadata or reserved address"
        if judged.is_global:
            return None
        if any(judged.version == net.version and judged in net for net in self.allow):
            return None
        return (
            f"{address} is a loopback, private or otherwise non-public address "
            "(the operator can admit it with source_allow_networks)"
        )

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address ``host`` resolves to, after checking each of them.

        Raises:
            UnsafeAddress: One of the addresses is refused (nothing is connected to).
            SourceError: The name does not resolve (retryable: DNS may come back).
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise SourceError(f"cannot resolve host {host!r}: {reason}", retryable=True) from None
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if address not in addresses:
                addresses.append(address)
        for address in addresses:
            why = self.refusal(address)
            if why:
                shown = host if host == address else f"{host!r} ({address})"
                raise UnsafeAddress(f"refusing to connect to {shown}: {why}")
        return addresses


def check_url(url: str, schemes: tuple[str, ...] = ("http", "https"), default_scheme: str | None = None) -> SplitResult:
    """Parses a source or endpoint URL and checks its form (not its addresses).

    Args:
        url: The URL as given by the user.
        schemes: Schemes accepted.
        default_scheme: Scheme assumed when the URL has none (``host:port`` endpoints).

    Returns:
        The parsed URL, scheme in lower case.

    Raises:
        ValueError: With a message naming what is wrong (malformed, scheme not supported).
    """
    if not url or any(ch in _CONTROL for ch in url):
        raise ValueError("malformed URL: it must not contain spaces or control characters")
    if default_scheme and "://" not in url:
        url = f"{default_scheme}://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise ValueError("malformed URL: no scheme (expected http:// or https://)")
    if scheme not in schemes:
        raise ValueError(f"unsupported URL scheme {scheme!r}: only {' and '.join(schemes)} are accepted")
    if not parts.hostname:
        raise ValueError("malformed URL: no host")
    if port == 0:
        raise ValueError("malformed URL: port 0")
    return parts._replace(scheme=scheme)


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


# Query parameters that carry credentials in signed and token URLs (compared in lower case): AWS SigV4 and
# SigV2 presigned URLs, Google Cloud Storage signed URLs, Azure SAS tokens, and the usual token names.
SECRET_PARAMETERS = frozenset({
    "x-amz-signature", "x-amz-credential", "x-amz-security-token", "signature", "awsaccesskeyid",
    "x-goog-signature", "x-goog-credential", "x-goog-security-token", "googleaccessid",
    "sig", "token", "access_token", "id_token", "refresh_token", "api_key", "apikey", "api-key",
    "password", "passwd", "secret", "client_secret", "auth", "authorization", "session_token",
})


def _redact_pairs(text: str) -> str:
    pairs = []
    for pair in text.split("&"):
        name, sep, _value = pair.partition("=")
        if sep and unquote_plus(name).strip().lower() in SECRET_PARAMETERS:
            pair = f"{name}=***"
        pairs.append(pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """The URL as it may be shown (responses, logs, reasons, plain database columns).

    The user-info password and the values of credential query parameters (:data:`SECRET_PARAMETERS`, in
    the query and in the fragment) are replaced by ``***``; everything else is kept as given.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<malformed URL>"
    if password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts._replace(query=_redact_pairs(parts.query), fragment=_redact_pairs(parts.fragment)))


def loggable_url(url: str) -> str:
    """Scheme, host and path only: no user-info, no query (presigned URLs carry signatures there)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<malformed URL>"
