"""Lease settings of replicas sharing one store, and the tracker's cheap "is a poll due" query."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from hpc.config import ConfigError, load_config
from hpc.store import open_store
from hpc.store.tables import utcnow

TERMINAL = ("completed", "failed", "cancelled", "timeout", "unknown")


def test_lease_defaults_and_overrides():
    config = load_config(environ={})
    assert (config.poll_lease_seconds, config.submit_lease_seconds, config.transfer_lease_seconds) == (30, 60, 30)
    config = load_config(environ={"HPC_POLL_LEASE_SECONDS": "5", "HPC_SUBMIT_LEASE_SECONDS": "7.5",
                                  "HPC_TRANSFER_LEASE_SECONDS": "9"})
    assert (config.poll_lease_seconds, config.submit_lease_seconds, config.transfer_lease_seconds) == (5, 7.5, 9)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
@pytest.mark.parametrize("name", ["POLL", "SUBMIT", "TRANSFER"])
def test_a_lease_must_be_a_positive_number_of_seconds(name, value):
    with pytest.raises(ConfigError) as caught:
        load_config(environ={f"HPC_{name}_LEASE_SECONDS": value})
    assert f"{name.lower()}_lease_seconds" in str(caught.value)


@pytest.fixture
def store(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}")
    now = utcnow()
    store.infrastructures.insert({
        "name": "a", "host": "h", "port": 22, "username": "u", "hostname": "c", "scheduler": "slurm",
        "settings": {}, "owner": "me", "created_at": now, "updated_at": now,
    })
    return store


def add_job(store, **fields):
    now = utcnow()
    values = {"id": str(uuid.uuid4()), "infrastructure": "a", "owner": "me", "kind": "script", "name": "j",
              "spec": {}, "scheduler_id": "17", "state": "queued", "watch_period": 10.0, "cancel_requested": False,
              "created_at": now, "updated_at": now, "next_poll_at": now + timedelta(seconds=10)}
    values.update(fields)
    return store.jobs.insert(values)


def test_a_poll_is_due_only_for_a_submitted_unfinished_job_due_or_to_cancel(store):
    now = utcnow()
    assert not store.jobs.poll_due("a", now, TERMINAL)  # no job
    add_job(store)
    assert not store.jobs.poll_due("a", now, TERMINAL)  # next check in 10 s
    add_job(store, state="completed", next_poll_at=now - timedelta(seconds=5))
    add_job(store, state="submitting", scheduler_id="", next_poll_at=now - timedelta(seconds=5))
    assert not store.jobs.poll_due("a", now, TERMINAL)  # ended, or not submitted yet
    assert store.jobs.poll_due("a", now + timedelta(seconds=11), TERMINAL)
    cancelled = add_job(store, cancel_requested=True)
    assert store.jobs.poll_due("a", now, TERMINAL)  # a cancel to send
    store.jobs.update(cancelled["id"], cancel_sent_at=now)
    assert not store.jobs.poll_due("a", now, TERMINAL)
    add_job(store, next_poll_at=None)
    assert store.jobs.poll_due("a", now, TERMINAL)  # never checked
    assert not store.jobs.poll_due("other", now, TERMINAL)
