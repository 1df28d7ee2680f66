"""URL checks and the address policy of transfer sources and S3 endpoints (pure, no network but DNS of literals)."""

from __future__ import annotations

import pytest

from hpc.staging.addresses import AddressPolicy, check_url, loggable_url, parse_networks, redact_url
from hpc.staging.errors import UnsafeAddress

LOOPBACK_ONLY = AddressPolicy(parse_networks("127.0.0.0/8,::1/128"))
STRICT = AddressPolicy()


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",  # AWS/GCP/Azure metadata
        "169.254.0.1",
        "100.100.100.200",  # Alibaba metadata
        "fd00:ec2::254",  # AWS metadata over IPv6
        "fe80::1",
        "fe80::1%eth0",
        "::ffff:169.254.169.254",  # IPv4-mapped
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::",
    ],
)
def test_link_local_and_metadata_are_refused_even_when_allowlisted(address):
    everything = AddressPolicy(parse_networks("0.0.0.0/0,::/0"))
    assert "link-local, metadata or reserved" in everything.refusal(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "::1",
                                     "fc00::1", "::ffff:10.0.0.1"])
def test_private_and_loopback_are_refused_by_default(address):
    assert "non-public" in STRICT.refusal(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert STRICT.refusal(address) is None


def test_the_allowlist_admits_exactly_its_networks():
    assert LOOPBACK_ONLY.refusal("127.0.0.1") is None
    assert LOOPBACK_ONLY.refusal("127.8.9.10") is None
    assert LOOPBACK_ONLY.refusal("::1") is None
    assert LOOPBACK_ONLY.refusal("::ffff:127.0.0.1") is None
    assert "non-public" in LOOPBACK_ONLY.refusal("10.0.0.1")
    assert "non-public" in LOOPBACK_ONLY.refusal("192.168.0.1")


def test_resolve_checks_every_address_before_returning():
    assert LOOPBACK_ONLY.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(UnsafeAddress) as refused:
        LOOPBACK_ONLY.resolve("169.254.169.254", 80)
    assert "169.254.169.254" in refused.value.reason
    with pytest.raises(UnsafeAddress):
        STRICT.resolve("127.0.0.1", 80)


def test_parse_networks_accepts_lists_and_commas():
    assert [str(n) for n in parse_networks(" 127.0.0.1, 10.0.0.0/8 ,")] == ["127.0.0.1/32", "10.0.0.0/8"]
    assert [str(n) for n in parse_networks(["::1"])] == ["::1/128"]
    with pytest.raises(ValueError):
        parse_networks("not-a-network")


@pytest.mark.parametrize(
    "url, message",
    [
        ("file:///etc/passwd", "unsupported URL scheme 'file'"),
        ("ftp://example.org/x", "unsupported URL scheme 'ftp'"),
        ("gopher://example.org/", "unsupported URL scheme 'gopher'"),
        ("example.org/x", "no scheme"),
        ("http:///path", "no host"),
        ("http://", "no host"),
        ("http://exa mple.org/", "spaces or control characters"),
        ("http://example.org/a\nb", "spaces or control characters"),
        ("http://example.org:99999/", "malformed URL"),
        ("http://example.org:0/", "port 0"),
        ("http://[::1/", "malformed URL"),
        ("", "malformed URL"),
    ],
)
def test_malformed_or_unsupported_urls_are_refused(url, message):
    with pytest.raises(ValueError) as refused:
        check_url(url)
    assert message in str(refused.value)


def test_good_urls_parse_with_a_lowercase_scheme():
    assert check_url("HTTPS://Example.org:8443/a?b=c").scheme == "https"
    assert check_url("http://[::1]:8080/x").hostname == "::1"


def test_endpoints_without_scheme_default_to_https():
    assert check_url("s3.example.org:9000", default_scheme="https").geturl() == "https://s3.example.org:9000"


def test_credentials_in_urls_are_never_shown():
    assert redact_url("https://user:s3cret@example.org/x?y=1") == "https://user:***@example.org/x?y=1"
    assert redact_url("https://example.org/x") == "https://example.org/x"
    assert loggable_url("https://user:s3cret@example.org:8443/x?X-Amz-Signature=abc") == "https://example.org:8443/x"
