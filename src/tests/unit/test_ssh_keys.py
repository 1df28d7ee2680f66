"""Private key loading, host key parsing and secret hiding, without any network."""

import base64
import hashlib
import os
import shutil
import subprocess

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hpc.ssh import SSHKeyError, SSHTarget, fingerprint, host_key_name, load_private_key, parse_host_key
from hpc.ssh.client import PREFERRED_CIPHERS, _cipher_order, _first_word
from hpc.ssh.hostkeys import expected_host_keys, preferred_key_types

PASSPHRASE = "correct horse"


def _private(kind):
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path, kind, fmt, passphrase=None):
    private = _private(kind)
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    private_format = {
        "openssh": serialization.PrivateFormat.OpenSSH,
        "pem": serialization.PrivateFormat.TraditionalOpenSSL,
        "pkcs8": serialization.PrivateFormat.PKCS8,
    }[fmt]
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, private_format, encryption))
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return public.decode()


CASES = [
    ("ed25519", "openssh"),
    ("ed25519", "pkcs8"),
    ("rsa", "openssh"),
    ("rsa", "pem"),
    ("ecdsa", "openssh"),
    ("ecdsa", "pem"),
]


@pytest.mark.parametrize("kind,fmt", CASES)
@pytest.mark.parametrize("encrypted", [False, True])
def test_loads_supported_keys(tmp_path, kind, fmt, encrypted):
    path = tmp_path / "key"
    public = _write_key(path, kind, fmt, PASSPHRASE if encrypted else None)
    key = load_private_key(key_path=str(path), passphrase=PASSPHRASE if encrypted else None)
    assert f"{key.get_name()} {key.get_base64()}" == public
    # Same key from inline text.
    inline = load_private_key(key_data=path.read_text(), passphrase=PASSPHRASE if encrypted else None)
    assert inline.asbytes() == key.asbytes()


def test_key_signs_and_verifies(tmp_path):
    path = tmp_path / "key"
    _write_key(path, "ecdsa", "pem")
    key = load_private_key(key_path=str(path))
    signature = key.sign_ssh_data(b"data")
    signature.rewind()
    assert key.verify_ssh_sig(b"data", signature) is True


def test_passphrase_ignored_for_plain_key(tmp_path):
    path = tmp_path / "key"
    _write_key(path, "ed25519", "openssh")
    assert load_private_key(key_path=str(path), passphrase="unused").get_name() == "ssh-ed25519"


def test_missing_file(tmp_path):
    with pytest.raises(SSHKeyError, match="key file not found"):
        load_private_key(key_path=str(tmp_path / "nope"))


def test_directory_is_not_a_key(tmp_path):
    with pytest.raises(SSHKeyError, match="directory"):
        load_private_key(key_path=str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "key"
    _write_key(path, "ed25519", "openssh")
    path.chmod(0)
    with pytest.raises(SSHKeyError, match="unreadable"):
        load_private_key(key_path=str(path))


@pytest.mark.parametrize("kind,fmt", [("ed25519", "openssh"), ("rsa", "pem"), ("ecdsa", "pkcs8")])
def test_wrong_passphrase(tmp_path, kind, fmt):
    path = tmp_path / "key"
    _write_key(path, kind, fmt, PASSPHRASE)
    with pytest.raises(SSHKeyError, match="^wrong passphrase$"):
        load_private_key(key_path=str(path), passphrase="not it")


@pytest.mark.parametrize("kind,fmt", [("ed25519", "openssh"), ("rsa", "pem")])
@pytest.mark.parametrize("passphrase", [None, ""])
def test_missing_passphrase(tmp_path, kind, fmt, passphrase):
    path = tmp_path / "key"
    _write_key(path, kind, fmt, PASSPHRASE)
    with pytest.raises(SSHKeyError, match="^key is encrypted: passphrase required$"):
        load_private_key(key_path=str(path), passphrase=passphrase)


@pytest.mark.parametrize(
    "text",
    [
        "garbage\n",
        "",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg user@host\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
        "-----BEGIN CERTIFICATE-----\nbm90IGEga2V5\n-----END CERTIFICATE-----\n",
    ],
)
def test_not_a_private_key(tmp_path, text):
    path = tmp_path / "key"
    path.write_text(text)
    with pytest.raises(SSHKeyError, match="^not a private key$"):
        load_private_key(key_path=str(path))


def test_no_key_and_both_keys(tmp_path):
    with pytest.raises(SSHKeyError, match="no private key"):
        load_private_key()
    path = tmp_path / "key"
    _write_key(path, "ed25519", "openssh")
    with pytest.raises(SSHKeyError, match="not both"):
        load_private_key(key_path=str(path), key_data=path.read_text())


def test_key_errors_carry_no_key_material(tmp_path):
    path = tmp_path / "key"
    _write_key(path, "ed25519", "openssh", PASSPHRASE)
    text = path.read_text()
    with pytest.raises(SSHKeyError) as info:
        load_private_key(key_data=text, passphrase="nope")
    body = text.splitlines()[1]
    assert body not in str(info.value)
    assert "nope" not in str(info.value)
    assert info.value.__cause__ is None


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_loads_ssh_keygen_encrypted_key(tmp_path):
    path = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-f", str(path)], check=True)
    key = load_private_key(key_path=str(path), passphrase=PASSPHRASE)
    assert f"{key.get_name()} {key.get_base64()}" == " ".join((tmp_path / "id.pub").read_text().split()[:2])
    with pytest.raises(SSHKeyError, match="wrong passphrase"):
        load_private_key(key_path=str(path), passphrase="other")


def test_target_repr_hides_secrets():
    target = SSHTarget(
        host="h",
        username="u",
        key_data="-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETBODY\n",
        passphrase="SECRETPASS",
    )
    text = repr(target)
    assert "SECRETBODY" not in text
    assert "SECRETPASS" not in text
    assert "host='h'" in text
    assert str(target) == text


def test_target_equality_includes_secrets():
    # The pool replaces a connection when any field changes, the passphrase too.
    assert SSHTarget(host="h", passphrase="a") != SSHTarget(host="h", passphrase="b")
    assert SSHTarget(host="h", key_data="k") == SSHTarget(host="h", key_data="k")


def test_fingerprint_matches_openssh():
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    blob = base64.b64decode(line.split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(parse_host_key(line)) == expected


def test_parse_host_key_rejects_bad_input():
    for text in [
        "",
        "ssh-ed25519",
        "ssh-ed25519 !!!",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg",
    ]:
        with pytest.raises(ValueError):
            parse_host_key(text)


def test_parse_host_key_ignores_comment():
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg"
    assert parse_host_key(line + " root@vm").get_base64() == line.split()[1]


def test_parse_host_key_accepts_a_known_hosts_line():
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg"
    assert parse_host_key("[127.0.0.1]:2222,vm " + line).get_base64() == line.split()[1]
    with pytest.raises(ValueError):
        parse_host_key("host ssh-ed25519 AAAA")


def test_host_key_name():
    assert host_key_name("example.org", 22) == "example.org"
    assert host_key_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_expected_host_keys_from_known_hosts(tmp_path):
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJJ4VtyN5XgrjMI8/Qe9zYghKgClI2tVgbHFUW7rbgXg"
    hashed = paramiko.HostKeys.hash_host("[10.0.0.9]:2200")
    known = tmp_path / "known_hosts"
    known.write_text(f"[h]:2222 {line}\nother {line}\n{hashed} {line}\n")
    keys, _ = expected_host_keys("h", 2222, None, str(known))
    assert [k.get_base64() for k in keys.lookup("[h]:2222").values()] == [line.split()[1]]
    keys, _ = expected_host_keys("h", 22, None, str(known))
    assert keys.lookup("h") is None
    keys, _ = expected_host_keys("10.0.0.9", 2200, None, str(known))
    assert keys.lookup("[10.0.0.9]:2200") is not None
    keys, source = expected_host_keys("h", 2222, None, str(tmp_path / "missing"))
    assert keys.lookup("[h]:2222") is None
    assert "not found" in source


def test_preferred_key_types_puts_known_first():
    available = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    rsa_key = paramiko.RSAKey(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert preferred_key_types([rsa_key], available)[:3] == ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")
    assert sorted(preferred_key_types([rsa_key], available)) == sorted(available)


def test_cipher_order_prefers_gcm():
    available = paramiko.Transport._preferred_ciphers
    ordered = _cipher_order(available)
    assert ordered[:2] == PREFERRED_CIPHERS
    assert sorted(ordered) == sorted(available)


def test_first_word_hides_assignment_values():
    assert _first_word("sbatch --parsable") == "sbatch"
    assert _first_word("TOKEN=s3cret curl x") == "TOKEN=..."
    assert _first_word("") == ""
