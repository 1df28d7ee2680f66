"""The S3 client's connect-time address guard fires, and would fail loudly if botocore's internals changed.

The guard replaces botocore's urllib3 pool classes (private attributes of botocore 1.44's URLLib3Session):
every connection the client opens resolves its host again and checks each address with the policy. The
request-time check (make_client) passes here; what is proven is the check at connect time, which is what
stops a DNS answer that changed in between (or a redirect) from reaching a refused address.
"""

from __future__ import annotations

import pytest

from hpc.staging.addresses import AddressPolicy, parse_networks
from hpc.staging.errors import UnsafeAddress
from hpc.staging.s3 import install_address_guard, make_client, s3_failure

pytestmark = pytest.mark.integration


class ChangingPolicy(AddressPolicy):
    """Admits loopback until ``refuse`` is set (a DNS answer that changes after the request was accepted)."""

    refuse = False

    def refusal(self, address):
        if ChangingPolicy.refuse:
            return f"{address} is refused now"
        return super().refusal(address)


def client_for(testbed, policy):
    return make_client(testbed["TESTBED_S3_ENDPOINT"], testbed["TESTBED_S3_ACCESS_KEY"],
                       testbed["TESTBED_S3_SECRET_KEY"], "us-east-1", policy)


def test_the_guard_refuses_at_connect_time(testbed):
    ChangingPolicy.refuse = False
    policy = ChangingPolicy(parse_networks("127.0.0.0/8"))
    client = client_for(testbed, policy)
    client.list_buckets()  # admitted: the connection is made
    client._endpoint.http_session.close()  # no pooled connection left to reuse
    ChangingPolicy.refuse = True
    try:
        with pytest.raises(Exception) as refused:
            client.list_buckets()
    finally:
        ChangingPolicy.refuse = False
    error = s3_failure(refused.value, "any", "key", "listing")
    assert isinstance(error, UnsafeAddress)
    assert "refused now" in error.reason


def test_the_guard_refuses_a_loopback_endpoint_the_policy_does_not_admit(testbed):
    with pytest.raises(UnsafeAddress):
        client_for(testbed, AddressPolicy())  # the request-time check, before any connection


def test_a_changed_botocore_fails_loudly_instead_of_leaving_the_client_unguarded(testbed):
    client = client_for(testbed, AddressPolicy(parse_networks("127.0.0.0/8")))

    class Renamed:
        """An HTTP session whose pool classes are no longer where the guard puts its own."""

    client._endpoint.http_session = Renamed()
    with pytest.raises(RuntimeError, match="botocore's HTTP session changed"):
        install_address_guard(client, AddressPolicy())
