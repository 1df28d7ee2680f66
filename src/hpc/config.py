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
from typing import Any, Mapping

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
    background: bool = True  # run pollers and transfer workers in this process
    instance_id: str = ""  # names this replica in work leases; default host:pid
    log_level: str = "INFO"
    fast_path: bool = True  # answer status GETs ahead of Connexion (hpc.api.fastpath)
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

    def replace(self, **changes: Any) -> "Config":
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
    "source_allow_networks": _parse_networks,
    "transfer_workers": int,
    "transfer_retries": int,
    "transfer_retry_delay": float,
    "transfer_lease_seconds": float,
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
    return Config(**values)
