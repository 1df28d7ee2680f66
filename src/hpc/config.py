"""Gateway configuration: one YAML file plus environment variables, with safe defaults.

Precedence: defaults < YAML file (``HPC_CONFIG`` or ``--config``) < environment variables.
Every setting has an environment variable named ``HPC_`` + its upper-case name, for example
``HPC_DATABASE_URL`` or ``HPC_STAGING_QUOTA``.

Tokens are configured as salted hashes (see ``hpc.security.hash_token``), never in plain text:
in YAML as a list of ``{name, role, hash}``; in the environment as
``HPC_TOKENS=name:role:hash[,name:role:hash...]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

ROLES = ("admin", "user")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4,
          "ki": 1024, "mi": 1024**2, "gi": 1024**3, "ti": 1024**4}


class ConfigError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True)
class TokenEntry:
    """A configured API token: who it is, what it may do, and the salted hash of its secret."""

    name: str
    role: str
    hash: str = field(repr=False)


@dataclass(frozen=True)
class Config:
    """All settings of one gateway process."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    data_dir: str = "/var/lib/hpc-gateway"
    database_url: str = ""  # default: SQLite file in data_dir
    staging_dir: str = ""  # default: data_dir/staging
    staging_quota: int = 20 * 1024**3
    key_dir: str = ""  # default: data_dir/keys
    encryption_key_file: str = ""  # default: data_dir/secret.key (created 0600 if missing)
    encryption_key: str = field(default="", repr=False)  # overrides the file (HPC_ENCRYPTION_KEY)
    known_hosts: str = ""  # default: data_dir/known_hosts (may not exist)
    trust_on_first_use: bool = False
    auth_enabled: bool = True
    tokens: tuple[TokenEntry, ...] = ()
    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 60.0
    min_watch_period: float = 2.0
    max_array_tasks: int = 10000  # tasks one array job may have (POST /job answers 400 above it)
    background: bool = True  # run pollers and transfer workers in this process
    instance_id: str = ""  # names this replica in work leases; default host:pid
    # Work leases between replicas sharing one database (docs/operations.md, "Several replicas"): the
    # holder renews them as it works; a replica that dies has its work taken over by another when they
    # run out. Shorter means faster takeover; one submission (SSH commands) must fit in its lease.
    poll_lease_seconds: float = 30.0  # polling an infrastructure's jobs
    submit_lease_seconds: float = 60.0  # submitting a claimed job
    log_level: str = "INFO"
    fast_path: bool = True  # answer status GETs ahead of Connexion (hpc.api.fastpath)
    # Largest request body accepted (bytes), checked before anything parses it (hpc.api.guard): larger
    # ones are answered 413. A job script's own cap (1 MiB characters, in the contract) lies within it:
    # a full-size script JSON-escaped as \uXXXX takes 6 MiB.
    max_body_size: int = 8 * 1024**2
    # Largest file uploaded through POST /infrastructure/{name}/files/upload (bytes; the guard answers 413
    # from Content-Length before reading). Bigger files go through transfers (/data, /s3_data).
    files_upload_max: int = 4 * 1024**2
    # Files streamed at once by this process (GET .../files/download); more are answered 503. Each holds
    # one of the API's WSGI worker threads (10) while it streams, so this keeps the API answering.
    files_downloads: int = 4
    # Networks a cluster's SSH host may resolve to although not public. Clusters usually sit on private
    # networks, so those are admitted by default; link-local and cloud metadata addresses are refused
    # whatever this says (the same AddressPolicy as transfer sources, hpc.staging.addresses).
    cluster_allow_networks: tuple[str, ...] = (
        "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7",
    )
    # Data staging (transfers). Networks admitted as transfer sources and S3 endpoints although they
    # are not public: loopback, private ranges (CIDRs, HPC_SOURCE_ALLOW_NETWORKS=127.0.0.1/32,10.0.0.0/8).
    # Link-local and cloud metadata addresses are refused whatever this says.
    source_allow_networks: tuple[str, ...] = ()
    transfer_workers: int = 4  # transfers run at once by this process
    transfer_retries: int = 5  # consecutive failed tries of a transfer leg before it fails
    transfer_retry_delay: float = 1.0  # first backoff (seconds), doubled per consecutive failure
    transfer_lease_seconds: float = 30.0  # a crashed replica's transfers are resumed after this
    transfer_max_rate: int = 0  # bytes/s read from a source per transfer; 0 = unlimited
    sftp_streams: int = 1  # SSH connections writing one big file in parallel (1: measured best on 2 cores)
    sftp_parallel_threshold: int = 256 * 1024**2  # files from this size use sftp_streams
    s3_part_size: int = 16 * 1024**2  # multipart part size (grown to stay under 10000 parts)
    s3_concurrency: int = 4  # parts uploaded at once
    # How bulk data reaches clusters: "openssh" (an ssh process per SFTP session: crypto in C, on another
    # core; needs the OpenSSH client), "paramiko" (in the gateway process), or "auto" (openssh if installed).
    ssh_data_engine: str = "auto"
    transfer_stall_timeout: float = 30.0  # seconds a source may send nothing mid-body: then it "stalled"
    transfer_io_timeout: float = 60.0  # seconds an SFTP session to a cluster may stay silent
    transfer_verify_every: int = 32 * 1024**2  # range checked on the cluster as it arrives; checkpoint step
    batch_concurrency: int = 8  # files of a batch (directory, prefix, URL list) read at once
    # Events and webhooks (hpc.services.webhooks, hpc.api.sse). Webhook URLs pass the same address
    # policy as transfer sources (source_allow_networks).
    webhook_workers: int = 8  # deliveries under way at once in this process
    webhook_per_subscription: int = 2  # of which at most this many to one subscription
    webhook_timeout: float = 10.0  # seconds to connect, and of silence while waiting for the answer
    webhook_max_attempts: int = 8  # tries before a delivery is dead-lettered
    webhook_retry_delay: float = 2.0  # first backoff (seconds), doubled per failed try
    webhook_retry_max_delay: float = 600.0  # backoff cap (seconds)
    event_retention_days: float = 7.0  # events and ended deliveries are pruned after this
    event_poll_interval: float = 0.25  # seconds between the SSE reader's looks at the store
    event_heartbeat: float = 15.0  # seconds of silence after which an SSE stream gets a comment
    event_queue_size: int = 1024  # events buffered per SSE subscriber before it is dropped as stalled
    event_send_timeout: float = 30.0  # seconds one SSE write may wait for a client that does not read
    event_max_subscribers: int = 2000  # SSE streams open at once in this process
    event_token_recheck: float = 5.0  # seconds between re-checks of an open SSE stream's token (revoked: ended)
    # Prometheus metrics (hpc.services.metrics). Port 0: /metrics on the API's port, for admin tokens only;
    # another port: served there without a token (bind it where only the scraper reaches), and the API's
    # /metrics answers 404.
    metrics_listen_host: str = "127.0.0.1"
    metrics_listen_port: int = 0
    # Seconds a process trusts its cached verdict on an API-made token before it re-reads the store's
    # revocation generation: a token revoked on any replica is refused everywhere within this (plus one
    # store read).
    token_cache_seconds: float = 0.5
    # Seconds /health/ready waits for the store before it reports it unreachable.
    ready_timeout: float = 2.0
    # OpenID Connect (hpc.services.oidc): bearer JWTs from this issuer, checked against its JWKS (a file
    # or an http(s) URL), for this audience. Off while oidc_issuer is empty.
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_jwks: str = ""
    oidc_algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                        "ES256", "ES384", "ES512", "EdDSA")
    oidc_principal_claim: str = "sub"  # names the caller (jobs belong to "oidc:" + its value)
    oidc_role_claim: str = "roles"  # a string or list of strings; a dotted path reaches nested claims
    oidc_role_map: tuple[tuple[str, str], ...] = (("admin", "admin"), ("user", "user"))  # claim value -> role
    oidc_leeway: float = 30.0  # seconds of clock skew allowed on exp, nbf, iat
    oidc_jwks_refresh: float = 300.0  # seconds between re-reads of a JWKS URL

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{Path(self.data_dir) / 'gateway.db'}"

    @property
    def resolved_staging_dir(self) -> Path:
        return Path(self.staging_dir or Path(self.data_dir) / "staging")

    @property
    def resolved_key_dir(self) -> Path:
        return Path(self.key_dir or Path(self.data_dir) / "keys")

    @property
    def resolved_encryption_key_file(self) -> Path:
        return Path(self.encryption_key_file or Path(self.data_dir) / "secret.key")

    @property
    def resolved_known_hosts(self) -> Path:
        return Path(self.known_hosts or Path(self.data_dir) / "known_hosts")

    @property
    def resolved_instance_id(self) -> str:
        return self.instance_id or f"{os.uname().nodename}:{os.getpid()}"

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def parse_size(value: Any) -> int:
    """Parses ``10GiB``, ``500M``, ``1024`` into bytes."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a size: {value!r} (examples: 1048576, 500MiB, 20GiB)")
    unit = (match.group(2) or "").lower().rstrip("b")
    return int(float(match.group(1)) * _UNITS[unit])


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"not a boolean: {value!r}")


def _parse_tokens(value: Any) -> tuple[TokenEntry, ...]:
    if isinstance(value, str):
        entries = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            parts = item.split(":", 2)
            if len(parts) != 3:
                raise ConfigError("HPC_TOKENS entries must read name:role:hash")
            entries.append({"name": parts[0], "role": parts[1], "hash": parts[2]})
        value = entries
    tokens = []
    for entry in value or ():
        if not isinstance(entry, Mapping) or not {"name", "role", "hash"} <= set(entry):
            raise ConfigError("each token needs name, role and hash")
        if entry["role"] not in ROLES:
            raise ConfigError(f"token {entry['name']!r}: role must be one of {ROLES}")
        tokens.append(TokenEntry(str(entry["name"]), str(entry["role"]), str(entry["hash"])))
    return tuple(tokens)


def _parse_list(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return tuple(str(item).strip() for item in items if str(item).strip())


def _parse_algorithms(value: Any) -> tuple[str, ...]:
    """JWT algorithms allowed: asymmetric ones only. ``none`` would accept unsigned tokens, and an HMAC
    algorithm would let anyone holding the issuer's *public* key sign tokens."""
    algorithms = _parse_list(value)
    for name in algorithms:
        if name.lower() == "none" or name.upper().startswith("HS"):
            raise ConfigError(f"oidc_algorithms: {name} is not allowed (asymmetric ones only: RS*, PS*, ES*, EdDSA)")
    if not algorithms:
        raise ConfigError("oidc_algorithms: give at least one algorithm")
    return algorithms


def _parse_role_map(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        pairs = []
        for item in _parse_list(value):
            claim_value, sep, role = item.rpartition(":")
            if not sep:
                raise ConfigError("HPC_OIDC_ROLE_MAP entries must read claim_value:role")
            pairs.append((claim_value, role))
    elif isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = [tuple(map(str, pair)) for pair in value or ()]
    for claim_value, role in pairs:
        if role not in ROLES:
            raise ConfigError(f"oidc_role_map: {claim_value!r} maps to {role!r}; roles are {ROLES}")
    return tuple(pairs)


def _parse_networks(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value or ())
    networks = []
    for item in (str(i).strip() for i in items):
        if item:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
    return tuple(networks)


def _parse_engine(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("auto", "openssh", "paramiko"):
        raise ConfigError(f"not an SSH data engine: {value!r} (auto, openssh or paramiko)")
    return text


def _positive(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ConfigError(f"must be more than 0 seconds, not {value!r}")
    return number


_CONVERTERS = {
    "listen_port": int,
    "staging_quota": parse_size,
    "trust_on_first_use": _parse_bool,
    "auth_enabled": _parse_bool,
    "background": _parse_bool,
    "fast_path": _parse_bool,
    "tokens": _parse_tokens,
    "ssh_connect_timeout": float,
    "ssh_command_timeout": float,
    "min_watch_period": float,
    "max_array_tasks": int,
    "source_allow_networks": _parse_networks,
    "cluster_allow_networks": _parse_networks,
    "max_body_size": parse_size,
    "files_upload_max": parse_size,
    "files_downloads": int,
    "transfer_workers": int,
    "transfer_retries": int,
    "transfer_retry_delay": float,
    "transfer_lease_seconds": _positive,
    "poll_lease_seconds": _positive,
    "submit_lease_seconds": _positive,
    "transfer_max_rate": parse_size,
    "sftp_streams": int,
    "sftp_parallel_threshold": parse_size,
    "s3_part_size": parse_size,
    "s3_concurrency": int,
    "ssh_data_engine": _parse_engine,
    "transfer_stall_timeout": float,
    "transfer_io_timeout": float,
    "transfer_verify_every": parse_size,
    "batch_concurrency": int,
    "webhook_workers": int,
    "webhook_per_subscription": int,
    "webhook_timeout": float,
    "webhook_max_attempts": int,
    "webhook_retry_delay": float,
    "webhook_retry_max_delay": float,
    "event_retention_days": float,
    "event_poll_interval": float,
    "event_heartbeat": float,
    "event_queue_size": int,
    "event_send_timeout": float,
    "event_max_subscribers": int,
    "event_token_recheck": _positive,
    "metrics_listen_port": int,
    "token_cache_seconds": float,
    "ready_timeout": float,
    "oidc_algorithms": _parse_algorithms,
    "oidc_role_map": _parse_role_map,
    "oidc_leeway": float,
    "oidc_jwks_refresh": float,
}


def load_config(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Builds the configuration from defaults, an optional YAML file and the environment.

    Args:
        path: YAML file; defaults to ``$HPC_CONFIG`` when set.
        environ: Environment to read (``os.environ`` by default).

    Raises:
        ConfigError: A value is malformed or a key is unknown.
    """
    environ = os.environ if environ is None else environ
    names = {f.name for f in dataclasses.fields(Config)}
    values: dict[str, Any] = {}
    path = path or environ.get("HPC_CONFIG")
    if path:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping")
        unknown = set(loaded) - names
        if unknown:
            raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
        values.update(loaded)
    for name in names:
        env_value = environ.get(f"HPC_{name.upper()}")
        if env_value is not None:
            values[name] = env_value
    for name, value in list(values.items()):
        convert = _CONVERTERS.get(name)
        try:
            values[name] = convert(value) if convert else (str(value) if value is not None else "")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"setting {name}: {exc}") from None
    config = Config(**values)
    if config.oidc_issuer and not (config.oidc_audience and config.oidc_jwks):
        raise ConfigError("oidc_issuer is set: oidc_audience and oidc_jwks (a JWKS file or URL) are needed too")
    return config
