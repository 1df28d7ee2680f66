"""Pure parts of the event layer: the signature scheme, SSE parsing, filters, the receiver helper."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest
import requests

from hpc.client.events import parse_sse
from hpc.client.webhooks import WebhookReceiver, verify_delivery
from hpc.errors import InvalidInput
from hpc.security import Principal
from hpc.services.events import EventFilter, document, encode, event_filter, sse_frame
from hpc.signatures import SignatureError, sign, verify
from hpc.store.events import EVENT_TYPES, RULES
from hpc.store.tables import utcnow

SECRET = "whsec_test"
BODY = b'{"id":7,"type":"job.state"}'


def test_signature_is_hmac_sha256_over_time_dot_body():
    header = sign(SECRET, BODY, timestamp=1700000000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(SECRET, BODY, header, now=1700000100) == 1700000000


@pytest.mark.parametrize("header, now, message", [
    (None, 1700000000, "no X-HPC-Signature header"),
    ("v1=abc", 1700000000, "malformed X-HPC-Signature header"),
    ("t=1700000000", 1700000000, "malformed X-HPC-Signature header"),
    ("t=1700000000,v1=00", 1700000000, "signature does not match"),
    (sign(SECRET, BODY, timestamp=1700000000), 1700000301, "signature time 1700000000 is more than 300s from now"),
    (sign("other", BODY, timestamp=1700000000), 1700000000, "signature does not match"),
])
def test_bad_signatures_are_refused_with_the_reason(header, now, message):
    with pytest.raises(SignatureError) as caught:
        verify(SECRET, BODY, header, now=now)
    assert str(caught.value) == message


def test_a_tampered_body_fails_and_a_second_v1_may_match():
    header = sign(SECRET, BODY)
    with pytest.raises(SignatureError):
        verify(SECRET, BODY + b" ", header)
    good = header.split("v1=")[1]
    assert verify(SECRET, BODY, f"{header.split(',')[0]},v1=deadbeef,v1={good}") > 0


def test_parse_sse_joins_data_lines_and_skips_comments():
    lines = [b"retry: 2000", b": connected", b"", b"id: 3", b"event: job.state", b"data: {\"a\":", b"data: 1}", b"",
             b": keepalive", b"", b"id: 4", b"data:x", b""]
    assert list(parse_sse(lines)) == [{"id": "3", "event": "job.state", "data": "{\"a\":\n1}"},
                                      {"id": "4", "data": "x"}]


def test_sse_frame_carries_the_document_as_compact_json():
    row = {"id": 9, "type": "transfer.progress", "kind": "transfer", "resource_id": "r", "owner": "u",
           "created_at": utcnow(), "data": {"bytes_done": 5}}
    frame = sse_frame(row)
    fields = list(parse_sse(frame.split(b"\n")))
    assert fields[0]["id"] == "9" and fields[0]["event"] == "transfer.progress"
    assert json.loads(fields[0]["data"]) == document(row)
    assert encode(document(row)) == fields[0]["data"].encode()


def test_filters_keep_users_to_their_own_events_and_name_bad_fields():
    user = event_filter(Principal("alice", "user"), kind="job", type="job.state,job.output")
    assert user == EventFilter(owner="alice", kinds=("job",), types=("job.state", "job.output"))
    row = {"owner": "alice", "kind": "job", "resource_id": "x", "type": "job.state"}
    assert (user.accepts(row), user.accepts({**row, "owner": "bob"}), user.accepts({**row, "type": "x"})) == (
        True, False, False)
    assert event_filter(Principal("root", "admin")).accepts({**row, "owner": "bob"}) is True
    for kwargs, field in (({"kind": "host"}, "kind"), ({"type": "job.nope"}, "type"),
                          ({"resource_id": "not-a-uuid"}, "resource_id")):
        with pytest.raises(InvalidInput) as caught:
            event_filter(Principal("alice", "user"), **kwargs)
        assert caught.value.field == field


def test_every_rule_names_a_known_event_type():
    assert set(EVENT_TYPES) == {"job.state", "job.output", "job.tasks", "job.held", "job.released", "job.phase",
                                "transfer.state", "transfer.progress"}
    assert {rule.type for rules in RULES.values() for rule in rules} == set(EVENT_TYPES)


def test_receiver_verifies_deduplicates_and_refuses_forgeries():
    got = []
    with WebhookReceiver(SECRET, got.append) as receiver:
        body = encode({"id": 5, "type": "job.state", "data": {}})
        good = {"X-HPC-Signature": sign(SECRET, body), "Content-Type": "application/json"}
        assert requests.post(receiver.url, data=body, headers=good, timeout=5).status_code == 204
        assert requests.post(receiver.url, data=body, headers=good, timeout=5).status_code == 204
        forged = {"X-HPC-Signature": sign("guess", body)}
        assert requests.post(receiver.url, data=body, headers=forged, timeout=5).status_code == 401
        stale = {"X-HPC-Signature": sign(SECRET, body, timestamp=int(time.time()) - 3600)}
        assert requests.post(receiver.url, data=body, headers=stale, timeout=5).status_code == 401
    assert [event["id"] for event in got] == [5]
    assert (receiver.repeats, receiver.rejected) == (1, 2)


def test_verify_delivery_returns_the_event():
    body = encode({"id": 1, "type": "transfer.state", "data": {"state": "completed"}})
    assert verify_delivery(SECRET, body, {"x-hpc-signature": sign(SECRET, body)})["data"] == {"state": "completed"}
    with pytest.raises(SignatureError):
        verify_delivery(SECRET, b"[]", {"X-HPC-Signature": sign(SECRET, b"[]")})
