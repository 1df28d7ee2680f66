"""``hpc-gateway token``, ``audit`` and ``subscription`` as a person or a script runs them, against a real
gateway: secrets shown once on stdout and nowhere else, revocation effective, the audit log readable."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_cli import cli, cli_json, gateway  # noqa: F401 (gateway: the module's fixture)

pytestmark = pytest.mark.integration


def test_token_create_use_list_revoke_and_the_audit_log(gateway):  # noqa: F811
    human = cli(gateway, "token", "create", "ci-bot", "--role", "user", "--expires", "2h")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    secrets = [line.removeprefix("token: ") for line in lines if line.startswith("token: hpc_")]
    assert len(secrets) == 1
    secret = secrets[0]
    assert human.stdout.count(secret) == 1
    assert "(shown once: the gateway keeps only a salted hash)" in lines
    assert secret not in human.stderr
    made = cli_json(gateway, "token", "create", "ci-bot-2", "--role", "admin")
    assert (made["name"], made["role"], made["state"], made["token"].startswith("hpc_")) == \
        ("ci-bot-2", "admin", "active", True)

    gateway.tokens["ci-bot"] = secret
    assert cli_json(gateway, "job", "list", token="ci-bot")["total"] == 0  # the new token works

    listed = cli(gateway, "token", "list")
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout and made["token"] not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if "ci-bot " in line)
    token_id = row.split()[0]
    assert row.split()[1:4] == ["ci-bot", "user", "active"]
    shown = cli_json(gateway, "token", "show", token_id)
    assert (shown["id"], shown["expires_at"] is not None, "token" in shown) == (token_id, True, False)

    refused = cli(gateway, "token", "list", token="user")
    assert (refused.returncode, "403" in refused.stderr) == (3, True)

    revoked = cli(gateway, "token", "revoke", token_id)
    assert (revoked.returncode, revoked.stdout) == (0, f"revoked {token_id} (ci-bot, user)\n")
    after = cli(gateway, "job", "list", token="ci-bot")
    assert (after.returncode, "401" in after.stderr, secret in after.stderr) == (3, True, False)
    active = cli_json(gateway, "token", "list", "--active")
    assert token_id not in [t["id"] for t in active["items"]]
    every = cli_json(gateway, "token", "list")
    assert [t["state"] for t in every["items"] if t["id"] == token_id] == ["revoked"]

    audit = cli_json(gateway, "audit", "--since", "1h")
    actions = [(entry["action"], entry["target"]) for entry in audit["items"]]
    assert ("token.create", token_id) in actions
    assert ("token.revoke", token_id) in actions
    assert secret not in json.dumps(audit)
    only = cli(gateway, "audit", "--action", "token.revoke")
    assert only.returncode == 0, only.stderr
    assert [line.split()[2] for line in only.stdout.splitlines()[1:]] == ["token.revoke"]  # AT is 2 words
    assert token_id in only.stdout
    future = cli_json(gateway, "audit", "--since", "2099-01-01T00:00:00Z")
    assert future["items"] == []
    bad = cli(gateway, "audit", "--since", "yesterday")
    assert (bad.returncode, "--since" in bad.stderr) == (2, True)
    assert secret not in gateway.log() and made["token"] not in gateway.log()


def test_the_old_token_form_still_makes_a_configured_token(gateway):  # noqa: F811
    made = cli_json(gateway, "token", "ci", "--role", "admin")
    assert (made["name"], made["role"], made["env"].startswith("HPC_TOKENS=ci:admin:sha256$")) == ("ci", "admin", True)
    assert cli_json(gateway, "token", "config", "ops")["role"] == "user"


def test_subscription_create_list_show_delete(gateway):  # noqa: F811
    human = cli(gateway, "subscription", "create", "http://127.0.0.1:9/hook", "--type", "job.state",
                "--type", "transfer.state", token="user")
    assert human.returncode == 0, human.stderr
    secrets = [line.removeprefix("secret: ") for line in human.stdout.splitlines() if line.startswith("secret: ")]
    assert len(secrets) == 1 and len(secrets[0]) >= 32
    assert human.stdout.count(secrets[0]) == 1
    made = cli_json(gateway, "subscription", "create", "http://127.0.0.1:9/other", token="user")
    assert (made["url"], made["types"], len(made["secret"]) >= 32) == ("http://127.0.0.1:9/other", None, True)

    listed = cli(gateway, "subscription", "list", token="user")
    assert listed.returncode == 0, listed.stderr
    assert secrets[0] not in listed.stdout and made["secret"] not in listed.stdout
    hook = next(line for line in listed.stdout.splitlines() if "/hook" in line)
    subscription_id = hook.split()[0]
    assert hook.split()[1:3] == ["http://127.0.0.1:9/hook", "job.state,transfer.state"]
    shown = cli_json(gateway, "subscription", "show", subscription_id, token="user")
    assert (shown["id"], shown["types"], "secret" in shown) == (subscription_id, ["job.state", "transfer.state"], False)
    hidden = cli(gateway, "subscription", "show", subscription_id, token="user2")  # another user's: not found
    assert (hidden.returncode, "404" in hidden.stderr) == (3, True)

    deleted = cli(gateway, "subscription", "delete", subscription_id, made["id"], token="user")
    assert (deleted.returncode, deleted.stdout) == (0, f"deleted {subscription_id}\ndeleted {made['id']}\n")
    gone = cli(gateway, "subscription", "show", subscription_id, token="user")
    assert (gone.returncode, "404" in gone.stderr) == (3, True)
    bad = cli(gateway, "subscription", "create", "ftp://127.0.0.1/x", token="user")
    assert (bad.returncode, "url" in bad.stderr) == (3, True)
    assert secrets[0] not in gateway.log() and made["secret"] not in gateway.log()
