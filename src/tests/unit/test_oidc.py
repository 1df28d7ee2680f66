"""OpenID Connect JWT checks with keys generated here (no identity provider): every refusal has its reason."""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from hpc.config import ConfigError, load_config
from hpc.security import AuthenticationFailed, Principal
from hpc.services import oidc
from hpc.services.oidc import JwksSource, OidcSettings, role_of, signing_keys, verify_jwt

ISSUER = "https://idp.example.org/realms/hpc"
AUDIENCE = "hpc-gateway"
SETTINGS = OidcSettings(ISSUER, AUDIENCE, ("RS256", "ES256", "EdDSA"), role_claim="groups",
                        role_map=(("hpc-admins", "admin"), ("hpc-users", "user")))


def public_jwk(algorithm, private_key, kid: str, **extra) -> dict:
    document = json.loads(algorithm.to_jwk(private_key.public_key()))
    document.update(kid=kid, **extra)
    return document


@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwks = {"keys": [public_jwk(RSAAlgorithm, rsa_key, "rsa-1", use="sig", alg="RS256"),
                     public_jwk(ECAlgorithm, ec_key, "ec-1"),
                     public_jwk(OKPAlgorithm, ed_key, "ed-1"),
                     {"kty": "oct", "kid": "shared", "k": base64.urlsafe_b64encode(b"s" * 32).decode()}]}
    return {"rsa": rsa_key, "ec": ec_key, "ed": ed_key, "other": other, "jwks": jwks,
            "signing": signing_keys(jwks)}


def claims(**overrides) -> dict:
    now = int(time.time())
    values = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now, "groups": ["hpc-users"]}
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(key, alg="RS256", kid="rsa-1", **overrides) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


def refused(token: str, keys: list[dict], settings=SETTINGS) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as caught:
        verify_jwt(token, keys, settings)
    return caught.value


def test_oct_keys_are_never_loaded(keys):
    assert [k["kid"] for k in keys["signing"]] == ["rsa-1", "ec-1", "ed-1"]


@pytest.mark.parametrize("which, alg, kid", [("rsa", "RS256", "rsa-1"), ("ec", "ES256", "ec-1"),
                                             ("ed", "EdDSA", "ed-1")])
def test_a_valid_token_gives_its_principal_and_expiry(keys, which, alg, kid):
    token = sign(keys[which], alg, kid)
    principal, expires = verify_jwt(token, keys["signing"], SETTINGS)
    assert principal == Principal("oidc:alice", "user", "oidc")
    assert expires == pytest.approx(time.time() + 300, abs=5)


# Times are offsets from the moment the token is made (the parameters are built when the module is
# collected, possibly many minutes before the test runs).
@pytest.mark.parametrize("overrides, reason, kind", [
    ({"exp": -120}, "the token has expired", "expired"),
    ({"aud": "someone-else"}, "the token is not meant for this audience", "audience"),
    ({"iss": "https://evil.example.org"}, "the token is from another issuer", "issuer"),
    ({"nbf": 600}, "the token is not valid yet", "not_yet_valid"),
    ({"exp": None}, "the token has no exp claim", "claims"),
    ({"aud": None}, "the token has no aud claim", "claims"),
    ({"sub": None}, "the token's sub claim is missing or longer than 120 characters", "claims"),
    ({"sub": "x" * 121}, "the token's sub claim is missing or longer than 120 characters", "claims"),
    ({"groups": ["other"]}, "the token's groups claim grants no role on this gateway", "no_role"),
])
def test_claims_are_checked(keys, overrides, reason, kind):
    now = int(time.time())
    overrides = {k: now + v if k in ("exp", "nbf") and v is not None else v for k, v in overrides.items()}
    failure = refused(sign(keys["rsa"], **overrides), keys["signing"])
    assert (failure.reason, failure.kind) == (reason, kind)


def test_expiry_within_the_leeway_is_accepted(keys):
    token = sign(keys["rsa"], exp=int(time.time()) - 10)
    principal, _ = verify_jwt(token, keys["signing"], SETTINGS)
    assert principal.name == "oidc:alice"


def test_unknown_kid(keys):
    failure = refused(sign(keys["rsa"], kid="rotated-away"), keys["signing"])
    assert (failure.reason, failure.kind) == ("the token's key id is unknown", "unknown_kid")


def test_no_kid_needs_a_single_key(keys):
    only_rsa = [k for k in keys["signing"] if k["kid"] == "rsa-1"]
    principal, _ = verify_jwt(sign(keys["rsa"], kid=None), only_rsa, SETTINGS)
    assert principal.role == "user"
    assert refused(sign(keys["rsa"], kid=None), keys["signing"]).kind == "unknown_kid"


def test_alg_none_is_refused(keys):
    unsigned = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    failure = refused(unsigned, keys["signing"])
    assert (failure.reason, failure.kind) == ("the token's algorithm is not allowed", "algorithm")


def test_hmac_with_the_public_key_as_secret_is_refused(keys):
    """The classic confusion: HS256 'signed' with the issuer's public key, which anyone has."""
    public_pem = keys["rsa"].public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}).encode())
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode())
    import hashlib
    import hmac as hmac_module

    signing_input = header.rstrip(b"=") + b"." + body.rstrip(b"=")
    signature = base64.urlsafe_b64encode(hmac_module.new(public_pem, signing_input, hashlib.sha256).digest())
    forged = (signing_input + b"." + signature.rstrip(b"=")).decode()
    failure = refused(forged, keys["signing"])
    assert failure.kind == "algorithm"
    # Even if an operator listed HS256, the RSA key would not fit it.
    lax = OidcSettings(ISSUER, AUDIENCE, ("RS256", "HS256"), role_claim="groups", role_map=SETTINGS.role_map)
    assert refused(forged, keys["signing"], lax).reason == "the token's algorithm does not fit its key"


def test_an_algorithm_must_fit_the_key_it_names(keys):
    # An ES256 token naming the RSA key, and an RS384 token naming a key whose JWK says RS256.
    assert refused(sign(keys["ec"], "ES256", "rsa-1"), keys["signing"]).kind == "algorithm"
    lax = OidcSettings(ISSUER, AUDIENCE, ("RS256", "RS384"), role_claim="groups", role_map=SETTINGS.role_map)
    assert refused(sign(keys["rsa"], "RS384", "rsa-1"), keys["signing"], lax).reason == \
        "the token's algorithm does not fit its key"


def test_a_tampered_token_is_refused(keys):
    token = sign(keys["rsa"])
    header, body, signature = token.split(".")
    promoted = base64.urlsafe_b64encode(json.dumps(claims(groups=["hpc-admins"])).encode()).rstrip(b"=").decode()
    failure = refused(f"{header}.{promoted}.{signature}", keys["signing"])
    assert (failure.reason, failure.kind) == ("the token's signature does not verify", "signature")
    other = sign(keys["other"])  # a key the issuer never published, under its kid
    assert refused(other, keys["signing"]).kind == "signature"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "eyJ.eyJ.x", "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIn0.!!!.x"])
def test_malformed_tokens(keys, token):
    failure = refused(token, keys["signing"])
    assert (failure.kind, failure.reason.startswith("the token is not a ")) == ("malformed", True)


@pytest.mark.parametrize("value, role", [
    (["hpc-users"], "user"), ("hpc-users", "user"), (["hpc-users", "hpc-admins"], "admin"),
    (["hpc-admins"], "admin"), ([], None), ("hpc-admins-not", None), (None, None), ([1, {"x": 2}], None),
])
def test_role_mapping(value, role):
    assert role_of({"groups": value}, SETTINGS) == role


def test_role_claim_may_be_nested(keys):
    settings = OidcSettings(ISSUER, AUDIENCE, ("RS256",), role_claim="realm_access.roles",
                            role_map=(("gateway-admin", "admin"),))
    token = sign(keys["rsa"], realm_access={"roles": ["offline_access", "gateway-admin"]}, groups=None)
    principal, _ = verify_jwt(token, keys["signing"], settings)
    assert principal == Principal("oidc:alice", "admin", "oidc")


def test_reasons_never_echo_the_token(keys):
    evil = sign(keys["rsa"], kid='x" , error="other\r\nSet-Cookie: a=b')
    assert refused(evil, keys["signing"]).reason == "the token's key id is unknown"


# -- configuration -------------------------------------------------------------------------------------

@pytest.mark.parametrize("algorithms", ["none", "RS256,HS256", "HS512", ""])
def test_configuration_refuses_symmetric_and_none(algorithms):
    with pytest.raises(ConfigError):
        load_config(environ={"HPC_OIDC_ALGORITHMS": algorithms})


def test_configuration_needs_audience_and_jwks_with_an_issuer():
    with pytest.raises(ConfigError):
        load_config(environ={"HPC_OIDC_ISSUER": ISSUER})
    config = load_config(environ={"HPC_OIDC_ISSUER": ISSUER, "HPC_OIDC_AUDIENCE": AUDIENCE,
                                  "HPC_OIDC_JWKS": "/etc/jwks.json", "HPC_OIDC_ROLE_MAP": "g:admin,h:user"})
    assert config.oidc_role_map == (("g", "admin"), ("h", "user"))
    with pytest.raises(ConfigError):
        load_config(environ={"HPC_OIDC_ROLE_MAP": "g:root"})


# -- the JWKS source ------------------------------------------------------------------------------------

def test_a_jwks_file_is_reread_when_it_changes(tmp_path, keys):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys["jwks"]["keys"][:1]}))
    now = [0.0]
    source = JwksSource(str(path), clock=lambda: now[0])
    assert [k["kid"] for k in source.keys()] == ["rsa-1"]
    path.write_text(json.dumps(keys["jwks"]))
    assert [k["kid"] for k in source.keys()] == ["rsa-1"]  # checked at most once a second
    now[0] = 1.5
    assert [k["kid"] for k in source.keys()] == ["rsa-1", "ec-1", "ed-1"]


def test_a_missing_jwks_is_a_503_not_a_401(tmp_path):
    source = JwksSource(str(tmp_path / "absent.json"))
    with pytest.raises(oidc.KeysUnavailable):
        source.keys()


@pytest.fixture
def jwks_server(keys):
    served = {"document": {"keys": keys["jwks"]["keys"][:1]}, "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            served["hits"] += 1
            body = json.dumps(served["document"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served["url"] = f"http://127.0.0.1:{server.server_address[1]}/jwks"
    yield served
    server.shutdown()
    server.server_close()


def test_a_jwks_url_is_fetched_again_for_an_unknown_kid_at_most_every_30_s(jwks_server, keys):
    now = [0.0]
    source = JwksSource(jwks_server["url"], refresh=300, clock=lambda: now[0])
    assert [k["kid"] for k in source.keys("rsa-1")] == ["rsa-1"]
    jwks_server["document"] = keys["jwks"]  # the issuer rotated in new keys
    assert [k["kid"] for k in source.keys("ec-1")] == ["rsa-1", "ec-1", "ed-1"]
    hits = jwks_server["hits"]
    for _ in range(50):  # made-up key ids cause no more fetches for 30 s
        source.keys("made-up")
    now[0] = 10.0
    source.keys("made-up-too")
    assert jwks_server["hits"] == hits
    now[0] = 31.0
    source.keys("made-up-again")
    assert jwks_server["hits"] == hits + 1
    now[0] = 400.0  # the refresh period
    source.keys()
    assert jwks_server["hits"] == hits + 2
