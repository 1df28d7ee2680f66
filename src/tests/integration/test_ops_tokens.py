"""Tokens made through the API on two live gateway processes sharing one PostgreSQL store; the audit log;
the principal recorded on jobs and transfers; OpenID Connect JWTs against a JWKS made in the test."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import jwt
import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support import infrastructure_body


def call(gateway, method: str, path: str, token: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{gateway.url}{path}", headers={"Authorization": f"Bearer {token}"},
                            timeout=60, **kwargs)


def refused_because(response: requests.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    reason = response.json()["detail"]
    assert response.headers["WWW-Authenticate"] == f'Bearer error="invalid_token", error_description="{reason}"'
    return reason


def stored(url: str, table: str, row_id: str) -> dict:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text(f"SELECT * FROM {table} WHERE id = :id"), {"id": row_id}).one()._mapping)
    finally:
        engine.dispose()


@pytest.fixture
def replicas(gateway_factory, pg_url, testbed):
    """Two gateway processes on one PostgreSQL database (each with its own configured tokens)."""
    env = {"HPC_DATABASE_URL": pg_url, "HPC_ENCRYPTION_KEY": "cw_0x689RpI-jtRR7oeJqkDW5tUOKLZMBWGDNTqNJKQ="}
    first = gateway_factory(extra_env=env)
    second = gateway_factory(extra_env=env)
    assert first.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm")).status_code == 201
    return first, second


def test_a_token_made_on_one_replica_is_refused_on_the_other_within_a_second_of_its_revocation(replicas, pg_url):
    first, second = replicas
    made = first.post("/token", {"name": "ci-bot", "role": "user"})
    assert made.status_code == 201, made.text
    document = made.json()
    token = document.pop("token")
    assert token.startswith("hpc_")
    assert (document["name"], document["role"], document["state"], document["created_by"]) == \
        ("ci-bot", "user", "active", "admin")

    # Used on both replicas (each now remembers it), through the fast path, Connexion and the guard.
    job = call(second, "POST", "/job", token, json={"infrastructure": "tb-slurm", "script": "sleep 30\n"})
    assert job.status_code == 201, job.text
    for gateway in (first, second):
        assert call(gateway, "GET", f"/job/{job.json()['id']}", token).status_code == 200
        assert call(gateway, "GET", "/job", token).status_code == 200
    assert call(second, "GET", "/token", token).status_code == 403  # a user token manages no tokens

    # The principal is recorded on what it makes: its name as owner, the token's id as credential.
    row = stored(pg_url, "jobs", job.json()["id"])
    assert (row["owner"], row["credential"]) == ("ci-bot", f"token:{document['id']}")
    transfer = call(second, "POST", "/data", token, json={"src": "http://127.0.0.1:8081/hello.txt",
                                                          "dst": f"ops-tokens/{uuid.uuid4()}.txt",
                                                          "infrastructure": "tb-slurm"})
    assert transfer.status_code == 201, transfer.text
    row = stored(pg_url, "transfers", transfer.json()["id"])
    assert (row["owner"], row["credential"]) == ("ci-bot", f"token:{document['id']}")

    listed = first.get("/token").json()
    assert [item["id"] for item in listed["items"]] == [document["id"]]
    assert token not in json.dumps(listed) and "hash" not in listed["items"][0]

    revoked = first.delete(f"/token/{document['id']}")
    revoked_at = time.monotonic()
    assert revoked.status_code == 200
    assert (revoked.json()["state"], revoked.json()["revoked_by"]) == ("revoked", "admin")
    while True:
        answer = call(second, "GET", f"/job/{job.json()['id']}", token)
        if answer.status_code == 401:
            break
        assert answer.status_code == 200
        time.sleep(0.02)
    elapsed = time.monotonic() - revoked_at
    assert elapsed < 1.0
    assert refused_because(answer) == "the token has been revoked"
    for gateway in (first, second):
        assert refused_because(call(gateway, "GET", "/job", token)) == "the token has been revoked"
        assert refused_because(call(gateway, "POST", "/job", token, json={"infrastructure": "tb-slurm"})) == \
            "the token has been revoked"  # answered by the request guard (a body)
    # Configured tokens keep working on both.
    assert first.get("/job").status_code == 200 and second.get("/job").status_code == 200
    assert first.delete(f"/job/{job.json()['id']}").status_code == 202
    assert first.request("DELETE", f"/data/{transfer.json()['id']}").status_code in (202, 409)

    audit = second.get("/audit", params={"action": "token.revoke"}).json()
    assert [(e["principal"], e["credential"], e["target"]) for e in audit["items"]] == \
        [("admin", "config", document["id"])]


def test_an_expired_token_is_refused_at_once_everywhere(replicas):
    first, second = replicas
    expires = datetime.now(timezone.utc) + timedelta(seconds=3)
    made = first.post("/token", {"name": "short", "role": "user", "expires_at": expires.isoformat()})
    assert made.status_code == 201, made.text
    token = made.json()["token"]
    assert call(second, "GET", "/job", token).status_code == 200  # remembered by the second replica
    time.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()) + 0.05)
    for gateway in (second, first):
        assert refused_because(call(gateway, "GET", "/job", token)) == "the token has expired"
    assert first.get(f"/token/{made.json()['id']}").json()["state"] == "expired"


def test_token_requests_are_checked(replicas):
    first, _ = replicas
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    for body, field in [({"name": "x", "role": "root"}, "role"), ({"name": "", "role": "user"}, "name"),
                        ({"name": "has space", "role": "user"}, "name"), ({"role": "user"}, "name"),
                        ({"name": "x", "role": "user", "expires_at": past}, "expires_at"),
                        ({"name": "x", "role": "user", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
                        ({"name": "x", "role": "user", "secret": "mine"}, None)]:
        answer = first.post("/token", body)
        assert answer.status_code == 400, (body, answer.text)
        if field:
            assert field in answer.json()["detail"] + str(answer.json().get("field"))
    assert first.post("/token", {"name": "x", "role": "user"}, token="user").status_code == 403
    assert first.delete(f"/token/{uuid.uuid4()}").status_code == 404
    assert first.get("/token/not-a-uuid").status_code == 400


def test_the_audit_log_lists_admin_actions(replicas, testbed):
    first, second = replicas
    assert first.post("/infrastructure", infrastructure_body(testbed, "tb-pbs", "pbs")).status_code == 201
    assert second.delete("/infrastructure/tb-pbs").status_code == 204
    made = second.post("/token", {"name": "auditor", "role": "admin"}).json()
    everything = first.get("/audit").json()
    assert [(e["action"], e["target"]) for e in everything["items"]] == [
        ("token.create", made["id"]), ("infrastructure.delete", "tb-pbs"), ("infrastructure.register", "tb-pbs"),
        ("infrastructure.register", "tb-slurm")]
    assert everything["items"][3]["details"] == {"host": "127.0.0.1", "port": 2222, "username": "hpcuser",
                                                 "scheduler": "slurm"}
    page = first.get("/audit", params={"limit": 1, "offset": 1}).json()
    assert (page["total"], [e["action"] for e in page["items"]]) == (4, ["infrastructure.delete"])
    assert first.get("/audit", params={"action": "infrastructure.register"}).json()["total"] == 2
    assert first.get("/audit", params={"principal": "nobody"}).json()["total"] == 0
    since = (datetime.now(timezone.utc) + timedelta(minutes=1)).isoformat()
    assert first.get("/audit", params={"since": since}).json()["total"] == 0
    assert first.get("/audit", params={"action": "made.up"}).status_code == 400
    assert first.get("/audit", token="user").status_code == 403
    # The new admin token works at once, on the other replica too, and is named in what it does.
    assert call(first, "GET", "/audit", made["token"]).status_code == 200
    assert call(first, "DELETE", f"/token/{made['id']}", made["token"]).status_code == 200
    last = first.get("/audit", params={"limit": 1}).json()["items"][0]
    assert (last["action"], last["principal"], last["credential"]) == ("token.revoke", "auditor",
                                                                       f"token:{made['id']}")


# -- OpenID Connect --------------------------------------------------------------------------------------

ISSUER = "https://idp.test.invalid/realms/hpc"
AUDIENCE = "hpc-gateway"


@pytest.fixture(scope="module")
def keys():
    return {"rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ec": ec.generate_private_key(ec.SECP256R1()),
            "stranger": rsa.generate_private_key(public_exponent=65537, key_size=2048)}


@pytest.fixture
def oidc_gateway(gateway_factory, tmp_path, keys, testbed):
    jwks = {"keys": []}
    for name, algorithm, kid in (("rsa", RSAAlgorithm, "rsa-1"), ("ec", ECAlgorithm, "ec-1")):
        jwk = json.loads(algorithm.to_jwk(keys[name].public_key()))
        jwk["kid"] = kid
        jwks["keys"].append(jwk)
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    gateway = gateway_factory(extra_env={
        "HPC_OIDC_ISSUER": ISSUER, "HPC_OIDC_AUDIENCE": AUDIENCE, "HPC_OIDC_JWKS": str(path),
        "HPC_OIDC_ROLE_CLAIM": "groups", "HPC_OIDC_ROLE_MAP": "hpc-admins:admin,hpc-users:user",
        "HPC_OIDC_ALGORITHMS": "RS256,ES256"})
    assert gateway.post("/infrastructure", infrastructure_body(testbed, "tb-slurm", "slurm")).status_code == 201
    return gateway


def make_jwt(keys, key="rsa", alg="RS256", kid="rsa-1", **overrides) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "groups": ["hpc-users"]}
    claims.update(overrides)
    return jwt.encode(claims, keys[key], algorithm=alg, headers={"kid": kid})


def test_jwts(oidc_gateway, keys):
    gateway = oidc_gateway
    user = make_jwt(keys)
    admin = make_jwt(keys, "ec", "ES256", "ec-1", sub="bob", groups=["hpc-admins", "hpc-users"])
    job = call(gateway, "POST", "/job", user, json={"infrastructure": "tb-slurm", "script": "true\n"})
    assert job.status_code == 201, job.text
    assert call(gateway, "GET", f"/job/{job.json()['id']}", user).status_code == 200  # the fast path
    assert call(gateway, "GET", "/audit", user).status_code == 403
    assert call(gateway, "GET", "/audit", admin).status_code == 200
    assert call(gateway, "GET", f"/job/{job.json()['id']}", admin).status_code == 200  # admins see all
    made = call(gateway, "POST", "/token", admin, json={"name": "from-oidc", "role": "user"}).json()
    entry = call(gateway, "GET", "/audit", admin).json()["items"][0]
    assert (entry["action"], entry["principal"], entry["credential"], entry["target"]) == \
        ("token.create", "oidc:bob", "oidc", made["id"])
    other_user = make_jwt(keys, sub="carol")
    assert call(gateway, "GET", f"/job/{job.json()['id']}", other_user).status_code == 404  # not carol's

    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": int(time.time()) + 300,
                           "groups": ["hpc-admins"]}, None, algorithm="none", headers={"kid": "rsa-1"})
    header, _, signature = user.split(".")
    promoted = jwt.utils.base64url_encode(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice",
                                                      "exp": int(time.time()) + 300,
                                                      "groups": ["hpc-admins"]}).encode()).decode()
    cases = {
        "expired": (make_jwt(keys, exp=int(time.time()) - 120), "the token has expired"),
        "wrong audience": (make_jwt(keys, aud="another-service"), "the token is not meant for this audience"),
        "wrong issuer": (make_jwt(keys, iss="https://evil.invalid"), "the token is from another issuer"),
        "unknown kid": (make_jwt(keys, kid="rsa-2"), "the token's key id is unknown"),
        "alg none": (unsigned, "the token's algorithm is not allowed"),
        "tampered": (f"{header}.{promoted}.{signature}", "the token's signature does not verify"),
        "a stranger's key": (make_jwt(keys, key="stranger"), "the token's signature does not verify"),
        "no role": (make_jwt(keys, groups=["staff"]), "the token's groups claim grants no role on this gateway"),
        "malformed": ("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.bm9wZQ", "the token's key id is unknown"),
        "garbage": ("eyJ!!.eyJ!!.x", "the token is not a well-formed JWT"),
    }
    for case, (token, reason) in cases.items():
        for method, path, body in (("GET", f"/job/{job.json()['id']}", None), ("GET", "/job", None),
                                   ("POST", "/job", {"infrastructure": "tb-slurm", "script": "true\n"})):
            answer = call(gateway, method, path, token, json=body)
            assert (case, method, path, refused_because(answer)) == (case, method, path, reason)
    metrics = gateway.get("/metrics").text
    assert 'hpc_auth_failures_total{reason="expired"} 3.0' in metrics
    assert user not in metrics and admin not in metrics

    row = gateway.get(f"/job/{job.json()['id']}").json()
    assert row["id"] == job.json()["id"]
    engine = sa.create_engine(f"sqlite:///{gateway.data_dir / 'gateway.db'}")
    with engine.connect() as conn:
        owner, credential = conn.execute(sa.text("SELECT owner, credential FROM jobs WHERE id = :id"),
                                         {"id": job.json()["id"]}).one()
    engine.dispose()
    assert (owner, credential) == ("oidc:alice", "oidc")
    assert gateway.get("/job").status_code == 200  # configured tokens still work beside OIDC
