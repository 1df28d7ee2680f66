"""The ``hpc-gateway`` command: run the gateway, make tokens, and drive a gateway from a shell.

    hpc-gateway serve [--config FILE] [--host H] [--port P]   run the gateway
    hpc-gateway token NAME [--role admin|user]                a new API token and the hash to configure
    hpc-gateway token create|list|show|revoke                 tokens made through the API (admin)
    hpc-gateway audit [--since 2h] [--action A]               the audit log (admin)
    hpc-gateway subscription create|list|show|delete          webhook subscriptions
    hpc-gateway infra  add|list|show|patch|rm|telemetry       infrastructures
    hpc-gateway job    submit|list|show|cancel|logs|wait      jobs (submit --dry-run: what would be sent)
    hpc-gateway template add|list|show|rm                     job templates
    hpc-gateway transfer http|s3-in|s3-out|list|show|cancel|wait
    hpc-gateway fs     ls|cat|get|put|rm|mkdir|mv|sum             the cluster's files
    hpc-gateway events [--follow] [--job ID] [--transfer ID] [--type T]   the event stream

The client commands talk to ``--url`` (default ``$HPC_URL``, else http://127.0.0.1:8080) with ``--token``
(default ``$HPC_TOKEN``). Every one of them takes ``--json`` and then prints the gateway's JSON record(s)
on stdout and nothing else there; progress displays always go to stderr.

Exit codes: 0 success; 1 the job or transfer ended without success (failed, cancelled, timeout);
2 a usage error (bad option, missing argument); 3 the gateway refused the request or could not be
reached (the problem is printed); 4 a wait ran out of time (the job or transfer goes on); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping

import click

from hpc import __version__
from datetime import UTC

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

# The settings of the command being run, for the error report after its context is gone.
_STATE: dict[str, Any] = {}


class Settings:
    """Connection and output settings: group options, overridden by the same options on a command."""

    def __init__(self, url: str | None, token: str | None, as_json: bool):
        self.url, self.token, self.as_json = url, token, as_json
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from hpc.client import Client

            self._client = Client(self.url, self.token or "")
        return self._client


def _settings() -> Settings:
    return click.get_current_context().find_object(Settings)


def client_options(func: Callable) -> Callable:
    """``--url``, ``--token`` and ``--json`` on a client command (they may also precede the command)."""

    def merge(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        settings = ctx.find_object(Settings)
        if settings is not None and value not in (None, False):
            setattr(settings, {"json": "as_json"}.get(param.name, param.name), value)
        return value

    func = click.option("--json", "json", is_flag=True, expose_value=False, callback=merge,
                        help="Print the gateway's JSON on stdout (for scripts).")(func)
    func = click.option("--token", expose_value=False, callback=merge, metavar="TOKEN",
                        help="Bearer token [default: $HPC_TOKEN].")(func)
    func = click.option("--url", expose_value=False, callback=merge, metavar="URL",
                        help="Gateway URL [default: $HPC_URL].")(func)
    return func


# -- output helpers --------------------------------------------------------------------------------------


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    console = Console(file=stream)
    if not console.is_terminal:
        console = Console(file=stream, width=200, no_color=True)
    return console


def _print(renderable: Any) -> None:
    """A rich table on stdout; away from a terminal as plain text without the padding at line ends."""
    console = _console()
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as captured:
        console.print(renderable)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def emit(value: Any, human: Callable[[Any], None]) -> None:
    """The record as JSON with ``--json``, else in ``human``'s words."""
    if _settings().as_json:
        emit_json(value)
    else:
        human(value)


def show_mapping(record: Mapping[str, Any], title: str | None = None) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in record.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        table.add_row(key, "" if value is None else str(value))
    _print(table)


def show_table(rows: Iterable[Mapping[str, Any]], columns: list[tuple[str, str | Callable]], empty: str) -> None:
    from rich.table import Table

    rows = list(rows)
    if not rows:
        click.echo(empty)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for heading, _ in columns:
        table.add_column(heading, overflow="fold")
    for row in rows:
        cells = []
        for _, getter in columns:
            value = getter(row) if callable(getter) else row.get(getter)
            cells.append("" if value is None else str(value))
        table.add_row(*cells)
    _print(table)


def _short_time(value: str | None) -> str:
    return (value or "").replace("T", " ")[:19]


def _parse_assignments(values: Iterable[str], option: str) -> dict[str, Any]:
    """``key=value`` pairs; ``a.b=1`` nests; values are JSON when they parse as JSON, else strings."""
    result: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        target = result
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f"{key!r} nests under a value", param_hint=option)
        target[parts[-1]] = value
    return result


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _load_document(path: str) -> Any:
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return yaml.safe_load(text)


def _display_options() -> dict[str, Any]:
    """Progress on stderr: live on a terminal; plain lines elsewhere, except none under ``--json``."""
    if _console(stderr=True).is_terminal:
        return {"live": True}
    if _settings().as_json:
        return {"live": False, "stream": _DEVNULL}
    return {"live": False}


def _drawn_on_stdout() -> bool:
    """Whether the live display's last frame already stands on the terminal stdout shows (no repeat)."""
    return sys.stdout.isatty() and sys.stderr.isatty() and os.path.sameopenfile(1, 2)


class _Discard:
    """A text stream that drops what is written (plain progress lines under --json off a terminal)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


_DEVNULL = _Discard()


# -- the command tree ------------------------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--url", envvar="HPC_URL", metavar="URL", help="Gateway URL [env: HPC_URL; default http://127.0.0.1:8080].")
@click.option("--token", envvar="HPC_TOKEN", metavar="TOKEN", help="Bearer token [env: HPC_TOKEN].")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON on stdout (for scripts).")
@click.version_option(__version__, prog_name="hpc-gateway")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """hpc-gateway: run the gateway, or drive one (infrastructures, jobs, templates, transfers).

    \b
    Exit codes: 0 success; 1 a job or transfer ended without success;
    2 usage error; 3 the gateway refused the request or was unreachable;
    4 a wait timed out; 130 interrupted.
    """
    ctx.obj = _STATE["settings"] = Settings(url, token, as_json)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                               "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args: tuple[str, ...]) -> int:
    """Run the gateway (API and background workers) until SIGINT/SIGTERM; see 'serve --help'."""
    from hpc.api.run import main as run

    return run(list(args))


# -- infrastructures -------------------------------------------------------------------------------------


@cli.group()
def infra() -> None:
    """Register, list, show, remove infrastructures; read their telemetry."""


INFRA_COLUMNS = [
    ("NAME", "name"), ("SCHEDULER", "scheduler"),
    ("SSH", lambda r: f"{r.get('username', '')}@{r.get('host')}:{r.get('port', 22)}"),
    ("HOSTNAME", "hostname"), ("HOST KEY", "host_key_fingerprint"),
    ("REGISTERED", lambda r: _short_time(r.get("created_at"))),
]


def _infra_entries(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, Mapping) and "hpc" in document:
        document = document["hpc"]
    if isinstance(document, Mapping):
        document = [document]
    if not isinstance(document, list) or not all(isinstance(entry, Mapping) for entry in document):
        raise click.BadParameter("expected an infrastructure, a list of them, or a fixture with an 'hpc:' list",
                                 param_hint="--from-file")
    return [dict(entry) for entry in document]


@infra.command("add")
@click.argument("name", required=False)
@click.option("--host", help="Address used for SSH.")
@click.option("--port", type=click.IntRange(1, 65535), help="SSH port [default: 22].")
@click.option("--user", "username", help="Login user on the cluster.")
@click.option("--hostname", help="The cluster's own name [default: the host].")
@click.option("--scheduler", type=click.Choice(["slurm", "pbs", "sge"]))
@click.option("--key", "key_path", metavar="PATH", help="Private key file, inside the gateway's key directory.")
@click.option("--key-type", type=click.Choice(["ssh-ed25519", "ssh-rsa"]), default="ssh-ed25519", show_default=True)
@click.option("--key-passphrase", envvar="HPC_KEY_PASSPHRASE", metavar="TEXT",
              help="The key's passphrase [env: HPC_KEY_PASSPHRASE].")
@click.option("--private-key-file", type=click.Path(exists=True, dir_okay=False),
              help="Send this private key itself (stored encrypted) instead of naming a path.")
@click.option("--host-key", metavar="'TYPE BASE64'", help="Pin the host's public key (or @FILE with it).")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Site setting, e.g. mpi_launcher='' or 'setup_lines=[\"module load mpi\"]' (repeatable).")
@click.option("--from-file", "from_file", metavar="FILE",
              help="Register from YAML/JSON: one infrastructure, a list, or a fixture's 'hpc:' list "
                   "(NAME then picks one).")
@click.option("--exist-ok", is_flag=True, help="An infrastructure of that name already registered is fine.")
@client_options
def infra_add(name, host, port, username, hostname, scheduler, key_path, key_type, key_passphrase,
              private_key_file, host_key, settings, from_file, exist_ok) -> int:
    """Register infrastructure NAME (admin). The gateway logs in over SSH before it answers."""
    from hpc.client import Conflict

    client = _settings().client
    if from_file:
        entries = _infra_entries(_load_document(from_file))
        if name:
            entries = [entry for entry in entries if entry.get("name") == name]
            if not entries:
                raise click.BadParameter(f"no infrastructure named {name!r} in {from_file}", param_hint="NAME")
    else:
        missing = [flag for flag, value in (("NAME", name), ("--host", host), ("--user", username),
                                            ("--scheduler", scheduler)) if not value]
        if not key_path and not private_key_file:
            missing.append("--key or --private-key-file")
        if missing:
            raise click.UsageError(f"missing {', '.join(missing)} (or use --from-file)")
        ssh_key: dict[str, Any] = {"type": key_type}
        if private_key_file:
            ssh_key["private_key"] = Path(private_key_file).read_text()
        else:
            ssh_key["path"] = key_path
        if key_passphrase:
            ssh_key["password"] = key_passphrase
        if host_key and host_key.startswith("@"):
            host_key = Path(host_key[1:]).read_text().strip()
        entry = {"name": name, "host": host, "username": username, "hostname": hostname or host,
                 "scheduler": scheduler, "ssh_key": ssh_key, "port": port, "host_key": host_key}
        if settings:
            entry["settings"] = _parse_assignments(settings, "--setting")
        entries = [entry]
    results, existing = [], set()
    for entry in entries:
        try:
            results.append(client.create_infrastructure(**entry))
        except Conflict:
            if not exist_ok:
                raise
            results.append(client.get_infrastructure(entry["name"]))
            existing.add(entry["name"])
    if _settings().as_json:
        emit_json(results[0] if len(results) == 1 and not from_file else results)
    else:
        for record in results:
            verb = "already registered:" if record["name"] in existing else "registered"
            click.echo(f"{verb} {record['name']} ({record['scheduler']}, "
                       f"{record.get('username')}@{record['host']}:{record.get('port', 22)}, "
                       f"host key {record.get('host_key_fingerprint', '?')})")
    return EXIT_OK


@infra.command("list")
@client_options
def infra_list() -> int:
    """List the registered infrastructures."""
    emit(_settings().client.list_infrastructures(),
         lambda rows: show_table(rows, INFRA_COLUMNS, "no infrastructure registered"))
    return EXIT_OK


@infra.command("show")
@click.argument("name")
@client_options
def infra_show(name: str) -> int:
    """Show one infrastructure."""
    emit(_settings().client.get_infrastructure(name), show_mapping)
    return EXIT_OK


@infra.command("patch")
@click.argument("name")
@click.option("--host", help="New address used for SSH.")
@click.option("--port", type=click.IntRange(1, 65535), help="New SSH port.")
@click.option("--user", "username", help="New login user.")
@click.option("--hostname", help="New name of the cluster.")
@click.option("--key", "key_path", metavar="PATH", help="New private key file, inside the gateway's key directory.")
@click.option("--private-key-file", type=click.Path(exists=True, dir_okay=False),
              help="Send this private key itself (stored encrypted) instead of naming a path.")
@click.option("--key-passphrase", envvar="HPC_KEY_PASSPHRASE", metavar="TEXT",
              help="The new key's passphrase, or alone the current key's new one [env: HPC_KEY_PASSPHRASE].")
@click.option("--host-key", metavar="'TYPE BASE64'", help="Pin this host key (or @FILE with it).")
@click.option("--unpin-host-key", is_flag=True, help="Unpin the host key: the gateway's known_hosts decides.")
@click.option("--setting", "settings", multiple=True, metavar="KEY=VALUE",
              help="Change one site setting, as 'infra add --setting' (repeatable); others stay.")
@click.option("--reset-setting", "reset", multiple=True, metavar="KEY",
              help="Drop a site setting back to its default (repeatable).")
@client_options
def infra_patch(name, host, port, username, hostname, key_path, private_key_file, key_passphrase, host_key,
                unpin_host_key, settings, reset) -> int:
    """Change infrastructure NAME (admin): only what is given changes.

    A new connection (host, port, user, key, host key) is tried before the gateway answers; if it does
    not work the change is refused (exit 3) and the old one stays in force. Jobs keep running.
    """
    if host_key and unpin_host_key:
        raise click.UsageError("give --host-key or --unpin-host-key, not both")
    if key_path and private_key_file:
        raise click.UsageError("give --key or --private-key-file, not both")
    ssh_key: dict[str, Any] | None = None
    if key_path or private_key_file or key_passphrase is not None:
        ssh_key = {"path": key_path} if key_path else {}
        if private_key_file:
            ssh_key["private_key"] = Path(private_key_file).read_text()
        if key_passphrase is not None:
            ssh_key["password"] = key_passphrase
    if host_key and host_key.startswith("@"):
        host_key = Path(host_key[1:]).read_text().strip()
    record = _settings().client.update_infrastructure(
        name, host=host, port=port, username=username, hostname=hostname, ssh_key=ssh_key,
        host_key="" if unpin_host_key else host_key,
        settings=_parse_assignments(settings, "--setting") if settings else None,
        reset_settings=list(reset) or None)
    emit(record, lambda r: click.echo(f"changed {r['name']} ({r['scheduler']}, {r.get('username')}@{r['host']}:"
                                      f"{r.get('port', 22)}, host key {r.get('host_key_fingerprint', '?')})"))
    return EXIT_OK


@infra.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@client_options
def infra_rm(names: tuple[str, ...]) -> int:
    """Unregister infrastructures (admin); refused while they have active jobs or transfers."""
    client = _settings().client
    for name in names:
        client.delete_infrastructure(name)
        if not _settings().as_json:
            click.echo(f"removed {name}")
    if _settings().as_json:
        emit_json({"removed": list(names)})
    return EXIT_OK


@infra.command("telemetry")
@click.argument("name")
@client_options
def infra_telemetry(name: str) -> int:
    """Partitions, nodes, CPUs and job counts, as the scheduler reports them now."""

    def human(record: Mapping[str, Any]) -> None:
        click.echo(f"{record['name']} ({record['scheduler']}, {record['hostname']}) at "
                   f"{_short_time(record.get('collected_at'))}")
        show_table(record.get("partitions", []), [
            ("PARTITION", "name"),
            ("NODES avail/total", lambda p: f"{p['avail_nodes']}/{p['total_nodes']}"),
            ("CPUS avail/total", lambda p: f"{p['avail_cpus']}/{p['total_cpus']}"),
            ("RUNNING", "running_jobs"), ("QUEUED", "queued_jobs"),
        ], "no partition")

    emit(_settings().client.telemetry(name), human)
    return EXIT_OK


# -- jobs ------------------------------------------------------------------------------------------------


@cli.group()
def job() -> None:
    """Submit, list, show, cancel jobs; read their output; wait for them."""


JOB_COLUMNS = [
    ("ID", "id"), ("INFRASTRUCTURE", "infrastructure"), ("NAME", "name"), ("STATE", "state"),
    ("EXIT", "exit_code"), ("SCHEDULER ID", "scheduler_id"), ("CREATED", lambda r: _short_time(r.get("created_at"))),
]


def _job_outcome(jobs: list[Mapping[str, Any]]) -> int:
    from hpc.client import job_succeeded

    return EXIT_OK if all(job_succeeded(j) for j in jobs) else EXIT_FAILED


def _wait(records: list[Mapping[str, Any]], timeout: float | None, poll: float, watch, line, outcome) -> int:
    """Waits with the live display ``watch``; prints the final records; returns the exit code."""
    from hpc.client import WaitTimeout

    as_json = _settings().as_json
    try:
        final = watch(_settings().client, records, timeout=timeout, poll=poll, **_display_options())
    except WaitTimeout as exc:
        if as_json:
            emit_json(exc.last)
        click.echo(f"hpc-gateway: {exc}", err=True)
        return EXIT_TIMEOUT
    if as_json:
        emit_json(final[0] if len(final) == 1 else final)
    elif not _drawn_on_stdout():
        for record in final:
            click.echo(line(record))
    return outcome(final)


def _wait_jobs(jobs: list[Mapping[str, Any]], timeout: float | None, poll: float) -> int:
    """Waits with live state lines; prints the outcome; returns the exit code."""
    from hpc.client.display import job_line, watch_jobs

    return _wait(jobs, timeout, poll, watch_jobs, job_line, _job_outcome)


# The contract's JobResources.walltime pattern: refused here with exit 2 rather than sent to be refused.
_WALLTIME = re.compile(r"^(\d{1,4}-)?\d{1,4}:[0-5]\d:[0-5]\d$")


def _walltime(_ctx, _param, value: str | None) -> str | None:
    if value is not None and not _WALLTIME.match(value):
        raise click.BadParameter(f"{value!r} does not read [D-]HH:MM:SS (for example 00:30:00 or 1-12:00:00)")
    return value


_CONDITIONS = ("ok", "notok", "any")


def _after(_ctx, _param, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        job, _, condition = value.partition(":")
        if not job or (condition and condition not in _CONDITIONS):
            raise click.BadParameter(f"{value!r} does not read ID[:ok|notok|any]")
    return values


@job.command("submit", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--infra", "infrastructure", envvar="HPC_INFRASTRUCTURE", required=True,
              help="Infrastructure to run on [env: HPC_INFRASTRUCTURE].")
@click.option("--script", type=click.File("r"), metavar="FILE", help="Bash script to run ('-' reads stdin).")
@click.option("--services", "services", multiple=True, metavar="NAME[,NAME]",
              help="SERRANO services (fft, kmean, knn, ...), with --param read_input_data=...")
@click.option("--template", metavar="NAME", help="A registered job template, with its --param values.")
@click.option("--template-version", type=click.IntRange(1), metavar="N", help="Template version [default: newest].")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="SERRANO or template parameter; dots nest (kmean.cluster_number=3); JSON values (repeatable).")
@click.option("--params-file", type=click.File("r"), metavar="FILE", help="Those parameters as YAML/JSON.")
@click.option("--name", help="Job name.")
@click.option("--nodes", type=click.IntRange(1))
@click.option("--tasks", type=click.IntRange(1))
@click.option("--cpus-per-task", type=click.IntRange(1))
@click.option("--memory-mb", type=click.IntRange(1))
@click.option("--walltime", metavar="[D-]HH:MM:SS", callback=_walltime)
@click.option("--partition", help="Partition (Slurm) or queue (PBS).")
@click.option("--account")
@click.option("--workdir", help="Working directory on the cluster (relative to home unless absolute).")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="Environment variable (repeatable).")
@click.option("--array", metavar="START-END[:STEP][%CAP]",
              help="Run it as an array of tasks, e.g. 0-99%10; each task sees HPC_ARRAY_TASK_ID.")
@click.option("--after", "after", multiple=True, metavar="ID[:ok|notok|any]", callback=_after,
              help="Start only after that job ended so (default ok: it completed); repeatable, all must hold.")
@click.option("--input", "inputs", multiple=True, metavar="SRC=DST",
              help="Stage SRC (an http(s) URL or s3://BUCKET/OBJECT) to DST on the cluster before the job is "
                   "submitted (repeatable).")
@click.option("--output", "outputs", multiple=True, metavar="SRC=s3://BUCKET/OBJECT[,when=always]",
              help="Upload SRC on the cluster to S3 after the job completed (with when=always: whatever its "
                   "end) (repeatable).")
@click.option("--endpoint", envvar=["HPC_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"], metavar="URL",
              help="S3 endpoint of the s3:// inputs and outputs [env: HPC_S3_ENDPOINT, AWS_ENDPOINT_URL].")
@click.option("--region", envvar=["HPC_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"],
              help="S3 region [env: HPC_S3_REGION, AWS_REGION; default local].")
@click.option("--access-key", envvar=["HPC_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"], metavar="KEY",
              help="[env: HPC_S3_ACCESS_KEY, AWS_ACCESS_KEY_ID]")
@click.option("--secret-key", envvar=["HPC_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"], metavar="KEY",
              help="[env: HPC_S3_SECRET_KEY, AWS_SECRET_ACCESS_KEY]; prefer the environment to the command line, "
                   "which other users can see.")
@click.option("--watch-period", type=float, help="Seconds between the gateway's status checks.")
@click.option("--dry-run", is_flag=True,
              help="Show what would be sent (batch script, payload, submit command, resources); submit nothing.")
@click.option("--reservation", metavar="TOKEN", help="Submit under the job id a --dry-run reserved (its script).")
@click.option("--wait", is_flag=True, help="Wait for the job with a live state line; exit 1 unless it succeeded.")
@click.option("--timeout", type=float, help="Seconds --wait waits at most (exit 4 then).")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between polls while waiting.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@client_options
def job_submit(infrastructure, script, services, template, template_version, params, params_file, name, nodes,
               tasks, cpus_per_task, memory_mb, walltime, partition, account, workdir, env, array, after,
               inputs, outputs, endpoint, region, access_key, secret_key,
               watch_period, dry_run, reservation, wait, timeout, poll, command) -> int:
    """Submit a job: --script FILE, --services NAMES, --template NAME, or a command after '--'.

    \b
    Examples:
      hpc-gateway job submit -i tb-slurm --walltime 00:05:00 --wait -- hostname
      hpc-gateway job submit -i tb-pbs --script job.sh --nodes 1 --tasks 2
      hpc-gateway job submit -i tb-slurm --services fft \\
          --param read_input_data=/Init_Data/raw_data_input_fft/input.csv --wait
      hpc-gateway job submit -i tb-slurm --template solver --param input=in.dat --dry-run
      hpc-gateway job submit -i tb-sge --array 0-99%10 -- bash -c 'echo task $HPC_ARRAY_TASK_ID'
      hpc-gateway job submit -i tb-pbs --after "$first":ok --wait -- echo second
      hpc-gateway job submit -i tb-slurm --services fft \
          --param read_input_data=/Init_Data/mine/signal.csv \
          --input s3://data/signal.csv=serrano/data/Init_Data/mine/signal.csv \
          --output serrano/data/Output_Data/CSVFormate/FFT_Filter_output.csv=s3://data/fft.csv --wait
    """
    service_names = [s.strip() for item in services for s in item.split(",") if s.strip()]
    given = [label for label, present in (("--script", script), ("--services", service_names),
                                          ("--template", template), ("a command", command)) if present]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --script FILE, --services NAMES, --template NAME, or a command "
                               "after '--'" + (f" (got {' and '.join(given)})" if given else ""))
    if dry_run and wait:
        raise click.UsageError("--dry-run submits nothing to --wait for")
    parameters: dict[str, Any] | None = None
    if params_file or params:
        parameters = {}
        if params_file:
            import yaml

            loaded = yaml.safe_load(params_file.read()) or {}
            if not isinstance(loaded, dict):
                raise click.BadParameter("expected a mapping", param_hint="--params-file")
            parameters.update(loaded)
        _merge(parameters, _parse_assignments(params, "--param"))
    resources = {key: value for key, value in (("nodes", nodes), ("tasks", tasks), ("cpus_per_task", cpus_per_task),
                                               ("memory_mb", memory_mb), ("walltime", walltime),
                                               ("partition", partition), ("account", account)) if value is not None}
    environment = None
    if env:
        environment = {}
        for item in env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--env")
            environment[key] = value
    request = dict(
        services=service_names or None, params=parameters if not template else None,
        template=template, parameters=parameters if template else None, template_version=template_version,
        script=script.read() if script else None, command=list(command) or None,
        resources=resources or None, name=name, workdir=workdir, env=environment, watch_period=watch_period,
        reservation=reservation,
        array=array, after=list(after) or None,
    )
    s3 = dict(endpoint=endpoint, region=region, access_key=access_key, secret_key=secret_key)
    request["inputs"] = [_staged_input(item, s3) for item in inputs] or None
    request["outputs"] = [_staged_output(item, s3) for item in outputs] or None
    if dry_run:
        emit(_settings().client.dry_run_job(infrastructure, **request), _show_dry_run)
        return EXIT_OK
    record = _settings().client.submit_job(infrastructure, **request)
    if wait:
        if not _settings().as_json:
            click.echo(f"submitted job {record['id']}", err=True)
        return _wait_jobs([record], timeout, poll)
    emit(record, lambda r: click.echo(r["id"]))
    return EXIT_OK


def _s3_keys(s3: Mapping[str, Any], hint: str) -> dict[str, Any]:
    missing = [f"--{name.replace('_', '-')}" for name in ("endpoint", "access_key", "secret_key") if not s3.get(name)]
    if missing:
        raise click.UsageError(f"{hint} names an S3 object: give {', '.join(missing)} (or their environment variables)")
    return dict(s3)


def _staged_input(value: str, s3: Mapping[str, Any]) -> dict[str, Any]:
    """``--input SRC=DST``: an http(s) URL or ``s3://BUCKET/OBJECT`` (split at the last ``=``: a URL's
    query may hold some) to DST on the cluster."""
    from hpc.client.api import http_input, s3_input

    source, sep, dst = value.rpartition("=")
    if not sep or not source or not dst:
        raise click.BadParameter(f"expected SRC=DST, got {value!r}", param_hint="--input")
    if source.startswith("s3://"):
        bucket, key = _s3_address(source, "--input")
        return s3_input(bucket=bucket, object=key, dst=dst, **_s3_keys(s3, "--input"))
    if not source.startswith(("http://", "https://")):
        raise click.BadParameter(f"SRC must be an http(s) URL or s3://BUCKET/OBJECT, got {source!r}",
                                 param_hint="--input")
    return http_input(source, dst)


def _staged_output(value: str, s3: Mapping[str, Any]) -> dict[str, Any]:
    """``--output SRC=s3://BUCKET/OBJECT[,when=always|success]``."""
    from hpc.client.api import s3_output

    when = "success"
    for choice in ("always", "success"):
        if value.endswith(f",when={choice}"):
            value, when = value[: -len(f",when={choice}")], choice
    src, sep, target = value.partition("=s3://")
    if not sep or not src:
        raise click.BadParameter(f"expected SRC=s3://BUCKET/OBJECT[,when=always], got {value!r}",
                                 param_hint="--output")
    bucket, key = _s3_address("s3://" + target, "--output")
    return s3_output(src=src, bucket=bucket, object=key, when=when, **_s3_keys(s3, "--output"))


def _show_dry_run(shown: Mapping[str, Any]) -> None:
    """A dry run as a person reads it: what would happen, then the two files as they would be written."""
    resources = " ".join(f"{key}={value}" for key, value in shown.get("resources", {}).items()) or "(defaults)"
    template = f", template {shown['template']} v{shown['template_version']}" if shown.get("template") else ""
    click.echo(f"# dry run on {shown['infrastructure']} ({shown['scheduler']}): nothing was submitted")
    click.echo(f"# job {shown['job_id']} ({shown['kind']}{template}), name {shown['name']}")
    click.echo(f"# job directory: {shown['job_dir']}")
    click.echo(f"# resources: {resources}")
    stdin = f" with {shown['script_path']} on its stdin" if shown.get("script_on_stdin") else ""
    click.echo(f"# submit command{stdin}:")
    click.echo(shown["submit_command"])
    click.echo(f"# submit exactly this: job submit ... --reservation {shown['reservation']}")
    for path, text in ((shown["script_path"], shown["script"]), (shown["payload_path"], shown["payload"])):
        click.echo(f"==> {path} <==")
        click.echo(text, nl=not text.endswith("\n"))


@job.command("list")
@click.option("-i", "--infra", "infrastructure", help="Only jobs on this infrastructure.")
@click.option("--state", type=click.Choice(["held", "submitting", "queued", "running", "staging_out", "completed",
                                            "failed", "cancelled", "timeout", "unknown"]))
@click.option("--since", metavar="ISO-TIME", help="Only jobs created at or after, e.g. 2026-01-01T00:00:00Z.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def job_list(infrastructure, state, since, limit, offset) -> int:
    """List jobs, newest first (a user sees their own; an admin sees all)."""

    def human(page: Mapping[str, Any]) -> None:
        show_table(page["items"], JOB_COLUMNS, "no job")
        if page["total"] > len(page["items"]):
            click.echo(f"({len(page['items'])} of {page['total']}; --offset {offset + len(page['items'])} for more)")

    emit(_settings().client.list_jobs(infrastructure=infrastructure, state=state, since=since, limit=limit,
                                      offset=offset), human)
    return EXIT_OK


@job.command("show")
@click.argument("job_id", metavar="ID")
@client_options
def job_show(job_id: str) -> int:
    """Show a job's status record."""
    emit(_settings().client.get_job(job_id), show_mapping)
    return EXIT_OK


@job.command("cancel")
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--wait", is_flag=True, help="Wait until the scheduler has ended the jobs.")
@click.option("--timeout", type=float, help="Seconds --wait waits at most.")
@client_options
def job_cancel(job_ids: tuple[str, ...], wait: bool, timeout: float | None) -> int:
    """Cancel jobs (idempotent while they run; refused once they ended)."""
    client = _settings().client
    records = [client.cancel_job(job_id) for job_id in job_ids]
    if wait:
        code = _wait_jobs(records, timeout, 0.5)
        return EXIT_OK if code == EXIT_FAILED else code  # cancelled is what was asked for
    if _settings().as_json:
        emit_json(records[0] if len(records) == 1 else records)
    else:
        for record in records:
            click.echo(f"cancel requested for job {record['id']} ({record.get('state')})")
    return EXIT_OK


TASK_COLUMNS = [
    ("INDEX", "index"), ("STATE", "state"), ("EXIT", "exit_code"), ("SCHEDULER ID", "scheduler_id"),
    ("STARTED", lambda r: _short_time(r.get("started_at"))), ("ENDED", lambda r: _short_time(r.get("ended_at"))),
    ("REASON", "reason"),
]


@job.command("tasks")
@click.argument("job_id", metavar="ID")
@click.option("--state", type=click.Choice(["queued", "running", "completed", "failed", "cancelled", "timeout",
                                            "unknown"]), help="Only tasks in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def job_tasks(job_id: str, state: str | None, limit: int, offset: int) -> int:
    """List an array job's tasks: index, state, exit code, times."""

    def human(page: Mapping[str, Any]) -> None:
        show_table(page["items"], TASK_COLUMNS, "no task")
        if page["total"] > offset + len(page["items"]):
            click.echo(f"({len(page['items'])} of {page['total']}; --offset {offset + len(page['items'])} for more)")

    emit(_settings().client.list_job_tasks(job_id, state=state, limit=limit, offset=offset), human)
    return EXIT_OK


@job.command("logs")
@click.argument("job_id", metavar="ID")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), default="stdout", show_default=True)
@click.option("--stderr", "use_stderr", is_flag=True, help="Same as --stream stderr.")
@click.option("--task", type=click.IntRange(0), help="An array job's task: its payload's output.")
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing as the output grows until the job ends; exit 1 unless it succeeded.")
@click.option("--offset", type=click.IntRange(0), default=0, help="Start at this byte.")
@click.option("--poll", type=float, default=0.5, show_default=True)
@client_options
def job_logs(job_id: str, stream: str, use_stderr: bool, task: int | None, follow: bool, offset: int,
             poll: float) -> int:
    """Print a job's stdout (or stderr), all of it or following it."""
    client = _settings().client
    stream = "stderr" if use_stderr else stream
    as_json = _settings().as_json
    if not follow:
        chunks, position = [], offset
        while True:
            chunk = client.job_output(job_id, stream, position, length=4 * 1024 * 1024, task=task)
            chunks.append(chunk)
            position = chunk.get("next_offset", position)
            if chunk.get("eof") or not chunk.get("data"):
                break
        if as_json:
            emit_json(chunks[0] if len(chunks) == 1 else chunks)
        else:
            for chunk in chunks:
                click.echo(chunk.get("data", ""), nl=False)
        return EXIT_OK
    for data in client.follow_job_output(job_id, stream, offset, poll=poll, task=task):
        if as_json:
            click.echo(json.dumps({"stream": stream, "data": data}))
        else:
            click.echo(data, nl=False)
        sys.stdout.flush()
    final = client.get_job(job_id)
    if not as_json:
        from hpc.client.display import job_line

        click.echo(job_line(final), err=True)
    return _job_outcome([final])


@job.command("wait")
@click.argument("job_ids", nargs=-1, required=True, metavar="ID...")
@click.option("--timeout", type=float, help="Seconds to wait at most (exit 4 then).")
@click.option("--poll", type=float, default=0.5, show_default=True)
@client_options
def job_wait(job_ids: tuple[str, ...], timeout: float | None, poll: float) -> int:
    """Wait for jobs with a live state line; exit 0 only if every one succeeded."""
    client = _settings().client
    return _wait_jobs([client.get_job(job_id) for job_id in job_ids], timeout, poll)


# -- job templates ---------------------------------------------------------------------------------------


@cli.group()
def template() -> None:
    """Register, list, show and deprecate job templates."""


TEMPLATE_COLUMNS = [
    ("NAME", "name"), ("VERSION", "version"), ("BUILTIN", lambda r: "yes" if r.get("builtin") else ""),
    ("DEPRECATED", lambda r: "yes" if r.get("deprecated") else ""), ("DESCRIPTION", "description"),
    ("ADDED", lambda r: _short_time(r.get("created_at"))),
]


@template.command("add")
@click.argument("name", required=False)
@click.option("--body", "body_file", type=click.File("r"), metavar="FILE",
              help="The batch script body with {{name}} placeholders ('-' reads stdin).")
@click.option("--parameters", "schema_file", type=click.File("r"), metavar="FILE",
              help="JSON Schema of the parameters (YAML or JSON).")
@click.option("--description", help="A line for people.")
@click.option("--resource", "resources", multiple=True, metavar="KEY=VALUE",
              help="Default resource of its jobs, e.g. walltime=00:30:00 (repeatable).")
@click.option("--from-file", "from_file", metavar="FILE",
              help="Everything from YAML/JSON: name, description, body, parameters, resources.")
@click.option("--new-version", is_flag=True, help="NAME exists: add a version (updating it).")
@client_options
def template_add(name, body_file, schema_file, description, resources, from_file, new_version) -> int:
    """Register job template NAME (admin), or with --new-version add a version of it.

    \b
    Example:
      hpc-gateway template add solver --body solver.sh --parameters solver.schema.yaml \\
          --resource walltime=00:30:00 --description "the solver, one input file"
    """
    import yaml

    document: dict[str, Any] = {}
    if from_file:
        loaded = _load_document(from_file)
        if not isinstance(loaded, Mapping):
            raise click.BadParameter("expected a mapping with body (and name, parameters, ...)",
                                     param_hint="--from-file")
        document.update(loaded)
    if name:
        document["name"] = name
    if body_file:
        document["body"] = body_file.read()
    if schema_file:
        document["parameters"] = yaml.safe_load(schema_file.read())
    if description is not None:
        document["description"] = description
    if resources:
        document["resources"] = _parse_assignments(resources, "--resource")
    missing = [label for label, key in (("NAME", "name"), ("--body", "body")) if not document.get(key)]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give them in --from-file)")
    client = _settings().client
    name = document.pop("name")
    body = document.pop("body")
    if new_version:
        record = client.add_template_version(name, body, **document)
    else:
        record = client.create_template(name, body, **document)
    emit(record, lambda r: click.echo(f"registered {r['name']} version {r['version']} "
                                      f"(parameters: {', '.join(r['placeholders']) or 'none'})"))
    return EXIT_OK


@template.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def template_list(limit: int, offset: int) -> int:
    """List job templates (their newest version), the built-in serrano one first."""
    emit(_settings().client.list_templates(limit=limit, offset=offset),
         lambda page: show_table(page["items"], TEMPLATE_COLUMNS, "no template"))
    return EXIT_OK


@template.command("show")
@click.argument("name")
@click.option("--version", "version", type=click.IntRange(1), help="This version [default: the newest].")
@click.option("--versions", "all_versions", is_flag=True, help="List its versions instead.")
@client_options
def template_show(name: str, version: int | None, all_versions: bool) -> int:
    """Show a template: its fields, then its body."""
    client = _settings().client
    if all_versions:
        emit(client.template_versions(name),
             lambda page: show_table(page["items"], TEMPLATE_COLUMNS, "no version"))
        return EXIT_OK

    def human(record: Mapping[str, Any]) -> None:
        show_mapping({key: value for key, value in record.items() if key != "body"})
        click.echo("==> body <==")
        click.echo(record["body"], nl=not record["body"].endswith("\n"))

    emit(client.get_template(name, version), human)
    return EXIT_OK


@template.command("rm")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@client_options
def template_rm(names: tuple[str, ...]) -> int:
    """Deprecate templates (admin): no new jobs from them; their versions stay readable."""
    client = _settings().client
    for name in names:
        client.deprecate_template(name)
        if not _settings().as_json:
            click.echo(f"deprecated {name}")
    if _settings().as_json:
        emit_json({"deprecated": list(names)})
    return EXIT_OK


# -- transfers -------------------------------------------------------------------------------------------


@cli.group()
def transfer() -> None:
    """Stage data onto a cluster (HTTP, S3) and results back to S3; list, show, cancel, wait."""


TRANSFER_COLUMNS = [
    ("ID", "id"), ("KIND", "kind"), ("INFRASTRUCTURE", "infrastructure"), ("STATE", "state"),
    ("BYTES", lambda r: _bytes_text(r)), ("FROM -> TO", lambda r: _route(r)),
    ("CREATED", lambda r: _short_time(r.get("created_at"))),
]


def _bytes_text(record: Mapping[str, Any]) -> str:
    from hpc.client.display import human_size

    text = human_size(record.get("bytes_done") or 0)
    if record.get("bytes_total") is not None:
        text += f"/{human_size(record['bytes_total'])}"
    return text


def _route(record: Mapping[str, Any]) -> str:
    from hpc.client.display import transfer_label

    return transfer_label(record).split(" ", 1)[1]


def _s3_address(value: str, param_hint: str) -> tuple[str, str]:
    if not value.startswith("s3://") or "/" not in value[5:] or value.endswith("/"):
        raise click.BadParameter(f"expected s3://BUCKET/OBJECT, got {value!r}", param_hint=param_hint)
    bucket, _, key = value[5:].partition("/")
    return bucket, key


def s3_options(func: Callable) -> Callable:
    options = [
        click.option("--endpoint", envvar=["HPC_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
                     required=True, help="S3 endpoint URL [env: HPC_S3_ENDPOINT, AWS_ENDPOINT_URL].",
                     metavar="URL"),
        click.option("--region", envvar=["HPC_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"], default="local",
                     show_default=True, help="[env: HPC_S3_REGION, AWS_REGION]"),
        click.option("--access-key", envvar=["HPC_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID"], required=True,
                     help="[env: HPC_S3_ACCESS_KEY, AWS_ACCESS_KEY_ID]", metavar="KEY"),
        click.option("--secret-key", envvar=["HPC_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"], required=True,
                     help="[env: HPC_S3_SECRET_KEY, AWS_SECRET_ACCESS_KEY]; prefer the environment to the "
                          "command line, which other users can see.", metavar="KEY"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def wait_options(func: Callable) -> Callable:
    func = click.option("--poll", type=float, default=0.5, show_default=True,
                        help="Seconds between polls while waiting.")(func)
    func = click.option("--timeout", type=float, help="Seconds --wait waits at most (exit 4 then).")(func)
    func = click.option("--wait", is_flag=True,
                        help="Wait with a progress bar; exit 1 unless the transfer completed.")(func)
    return func


infra_option = click.option("-i", "--infra", "infrastructure", envvar="HPC_INFRASTRUCTURE", required=True,
                            help="Infrastructure [env: HPC_INFRASTRUCTURE].")


def _transfer_outcome(records: list[Mapping[str, Any]]) -> int:
    from hpc.client import transfer_succeeded

    return EXIT_OK if all(transfer_succeeded(r) for r in records) else EXIT_FAILED


def _wait_transfers(records: list[Mapping[str, Any]], timeout: float | None, poll: float) -> int:
    from hpc.client.display import transfer_line, watch_transfers

    return _wait(records, timeout, poll, watch_transfers, transfer_line, _transfer_outcome)


def _started(record: Mapping[str, Any], wait: bool, timeout: float | None, poll: float) -> int:
    if wait:
        if not _settings().as_json:
            click.echo(f"started transfer {record['id']}", err=True)
        return _wait_transfers([record], timeout, poll)
    emit(record, lambda r: click.echo(r["id"]))
    return EXIT_OK


@transfer.command("http")
@click.argument("source_url", metavar="URL")
@click.argument("dst")
@infra_option
@wait_options
@client_options
def transfer_http(source_url: str, dst: str, infrastructure: str, wait: bool, timeout: float | None,
                  poll: float) -> int:
    """Copy an http(s) URL to DST on the cluster (relative to the home directory)."""
    record = _settings().client.create_http_transfer(source_url, dst, infrastructure)
    return _started(record, wait, timeout, poll)


@transfer.command("s3-in")
@click.argument("source", metavar="s3://BUCKET/OBJECT")
@click.argument("dst")
@infra_option
@s3_options
@wait_options
@client_options
def transfer_s3_in(source: str, dst: str, infrastructure: str, endpoint: str, region: str, access_key: str,
                   secret_key: str, wait: bool, timeout: float | None, poll: float) -> int:
    """Copy an S3 object to DST on the cluster."""
    bucket, key = _s3_address(source, "s3://BUCKET/OBJECT")
    record = _settings().client.create_s3_data_transfer(
        endpoint=endpoint, bucket=bucket, object=key, region=region, access_key=access_key, secret_key=secret_key,
        dst=dst, infrastructure=infrastructure)
    return _started(record, wait, timeout, poll)


@transfer.command("s3-out")
@click.argument("src")
@click.argument("target", metavar="s3://BUCKET/OBJECT")
@infra_option
@s3_options
@wait_options
@client_options
def transfer_s3_out(src: str, target: str, infrastructure: str, endpoint: str, region: str, access_key: str,
                    secret_key: str, wait: bool, timeout: float | None, poll: float) -> int:
    """Copy SRC on the cluster to an S3 object."""
    bucket, key = _s3_address(target, "s3://BUCKET/OBJECT")
    record = _settings().client.create_s3_result_transfer(
        endpoint=endpoint, bucket=bucket, object=key, region=region, access_key=access_key, secret_key=secret_key,
        src=src, infrastructure=infrastructure)
    return _started(record, wait, timeout, poll)


kind_option = click.option("--kind", type=click.Choice(["http", "s3_data", "s3_result"]),
                           help="The transfer's kind (found by asking when not given).")


@transfer.command("list")
@click.option("-i", "--infra", "infrastructure", help="Only transfers of this infrastructure.")
@kind_option
@click.option("--state", type=click.Choice(["queued", "transferring", "verifying", "completed", "failed",
                                            "cancelled"]))
@click.option("--since", metavar="ISO-TIME")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def transfer_list(infrastructure, kind, state, since, limit, offset) -> int:
    """List transfers of every kind, newest first."""

    def human(page: Mapping[str, Any]) -> None:
        show_table(page["items"], TRANSFER_COLUMNS, "no transfer")
        if page["total"] > len(page["items"]):
            click.echo(f"({len(page['items'])} of {page['total']}; --offset {offset + len(page['items'])} for more)")

    emit(_settings().client.list_transfers(infrastructure=infrastructure, kind=kind, state=state, since=since,
                                           limit=limit, offset=offset), human)
    return EXIT_OK


@transfer.command("show")
@click.argument("transfer_id", metavar="ID")
@kind_option
@client_options
def transfer_show(transfer_id: str, kind: str | None) -> int:
    """Show a transfer's status record."""
    emit(_settings().client.get_transfer(transfer_id, kind), show_mapping)
    return EXIT_OK


@transfer.command("cancel")
@click.argument("transfer_ids", nargs=-1, required=True, metavar="ID...")
@kind_option
@client_options
def transfer_cancel(transfer_ids: tuple[str, ...], kind: str | None) -> int:
    """Cancel transfers (refused once they ended)."""
    client = _settings().client
    records = [client.cancel_transfer(transfer_id, kind) for transfer_id in transfer_ids]
    if _settings().as_json:
        emit_json(records[0] if len(records) == 1 else records)
    else:
        for record in records:
            click.echo(f"cancel requested for transfer {record['id']} ({record.get('state')})")
    return EXIT_OK


@transfer.command("wait")
@click.argument("transfer_ids", nargs=-1, required=True, metavar="ID...")
@kind_option
@click.option("--timeout", type=float, help="Seconds to wait at most (exit 4 then).")
@click.option("--poll", type=float, default=0.5, show_default=True)
@client_options
def transfer_wait(transfer_ids: tuple[str, ...], kind: str | None, timeout: float | None, poll: float) -> int:
    """Wait for transfers with progress bars; exit 0 only if every one completed."""
    client = _settings().client
    return _wait_transfers([client.get_transfer(transfer_id, kind) for transfer_id in transfer_ids], timeout, poll)


# -- the cluster's files ---------------------------------------------------------------------------------


@cli.group()
def fs() -> None:
    """The cluster's files: ls, cat, get, put, rm, mkdir, mv, sum (paths relative to the home unless
    absolute, inside the infrastructure's allowed roots)."""


def infra_option(func: Callable) -> Callable:
    return click.option("-i", "--infra", "infrastructure", envvar="HPC_INFRASTRUCTURE", required=True,
                        help="The infrastructure [env: HPC_INFRASTRUCTURE].")(func)


FILE_COLUMNS = [
    ("NAME", lambda r: r["name"] + ("/" if r.get("type") == "directory" else "")),
    ("TYPE", "type"), ("SIZE", "size"), ("MODE", "mode"), ("MODIFIED", lambda r: _short_time(r.get("mtime"))),
]


class _ByteProgress:
    """A byte count on stderr while a person waits: a rich bar on a terminal, nothing elsewhere."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self._progress, self._task = label, total, None, None

    def __enter__(self) -> _ByteProgress:
        if _console(stderr=True).is_terminal and not _settings().as_json:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                      TransferSpeedColumn(), TimeRemainingColumn(), console=_console(stderr=True),
                                      transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total)
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total or self.total)

    def __exit__(self, *exc_info) -> None:
        if self._progress is not None:
            self._progress.stop()


class _CountingReader:
    """A file's bytes read by ``requests`` in blocks, reporting how many were sent."""

    def __init__(self, data: bytes, report: Callable[[int], None]):
        self._data, self._position, self._report = data, 0, report

    def __len__(self) -> int:
        return len(self._data)

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._position + size
        chunk = self._data[self._position:end]
        self._position += len(chunk)
        self._report(self._position)
        return chunk


@fs.command("ls")
@click.argument("path", default="~")
@infra_option
@click.option("--limit", type=click.IntRange(1, 1000), help="Entries per page [default: 100].")
@click.option("--offset", type=click.IntRange(0), help="Entries to skip.")
@client_options
def fs_ls(path: str, infrastructure: str, limit: int | None, offset: int | None) -> int:
    """List a directory on the cluster."""
    listing = _settings().client.list_files(infrastructure, path, limit=limit, offset=offset)

    def human(page: Mapping[str, Any]) -> None:
        show_table(page["items"], FILE_COLUMNS, f"{page['path']} is empty")
        shown = page["offset"] + len(page["items"])
        if shown < page["total"] or page.get("truncated"):
            click.echo(f"({len(page['items'])} of {page['total']}{'+' if page.get('truncated') else ''} entries; "
                       f"--offset {shown} for more)", err=True)

    emit(listing, human)
    return EXIT_OK


@fs.command("cat")
@click.argument("path")
@infra_option
@click.option("--offset", type=click.IntRange(0), help="First byte to read [default: 0].")
@click.option("--length", type=click.IntRange(1, 4 * 1024 * 1024), help="Bytes to read [default: 64 KiB].")
@click.option("--tail", type=click.IntRange(1, 4 * 1024 * 1024), help="Read the last N bytes instead.")
@client_options
def fs_cat(path: str, infrastructure: str, offset: int | None, length: int | None, tail: int | None) -> int:
    """Print (part of) a file: its bytes as they are, at most 4 MiB (`fs get` for whole files)."""
    import base64

    record = _settings().client.read_file(infrastructure, path, offset=offset, length=length, tail=tail,
                                          encoding="base64")
    if _settings().as_json:
        emit_json(record)
    else:
        sys.stdout.flush()
        sys.stdout.buffer.write(base64.b64decode(record["data"]))
        sys.stdout.buffer.flush()
    return EXIT_OK


@fs.command("get")
@click.argument("path")
@click.argument("destination", required=False)
@infra_option
@client_options
def fs_get(path: str, destination: str | None, infrastructure: str) -> int:
    """Download a file (DESTINATION: a file or a directory, default its name here; '-' for stdout)."""
    client = _settings().client
    if destination == "-":
        _, chunks = client.iter_download(infrastructure, path)
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(destination or os.path.basename(path.rstrip("/")) or "download")
    if target.is_dir():
        target = target / os.path.basename(path.rstrip("/"))
    with _ByteProgress(f"get {os.path.basename(path)}", 0) as progress:
        size = client.download_file(infrastructure, path, target, progress=progress)
    emit({"path": path, "destination": str(target), "size": size},
         lambda r: click.echo(f"{r['destination']}: {r['size']} bytes"))
    return EXIT_OK


@fs.command("put")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.argument("path")
@infra_option
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@client_options
def fs_put(source: str, path: str, infrastructure: str, overwrite: bool) -> int:
    """Upload a small file (the gateway's files_upload_max, 4 MiB by default; transfers for big ones).
    A PATH ending in '/' names a directory: the file keeps its name."""
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    if path.endswith("/") and source != "-":
        path += os.path.basename(source)
    with _ByteProgress(f"put {os.path.basename(path)}", len(data)) as progress:
        record = _settings().client.upload_file(infrastructure, path, _CountingReader(data, progress),
                                                overwrite=overwrite)
    emit(record, lambda r: click.echo(f"{r['path']}: {r['size']} bytes"))
    return EXIT_OK


@fs.command("rm")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@infra_option
@click.option("-r", "--recursive", is_flag=True, help="Remove directories and everything in them.")
@client_options
def fs_rm(paths: tuple[str, ...], infrastructure: str, recursive: bool) -> int:
    """Remove files (and directories, with -r)."""
    for path in paths:
        _settings().client.remove_file(infrastructure, path, recursive=recursive)
        if not _settings().as_json:
            click.echo(f"removed {path}")
    return EXIT_OK


@fs.command("mkdir")
@click.argument("path")
@infra_option
@client_options
def fs_mkdir(path: str, infrastructure: str) -> int:
    """Make a directory and its missing parents (mkdir -p)."""
    record = _settings().client.make_directory(infrastructure, path)
    emit(record, lambda r: click.echo(r["path"]))
    return EXIT_OK


@fs.command("mv")
@click.argument("src")
@click.argument("dst")
@infra_option
@client_options
def fs_mv(src: str, dst: str, infrastructure: str) -> int:
    """Move or rename (an existing DST is never replaced)."""
    record = _settings().client.move_file(infrastructure, src, dst)
    emit(record, lambda r: click.echo(f"{src} -> {r['path']}"))
    return EXIT_OK


@fs.command("sum")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@infra_option
@client_options
def fs_sum(paths: tuple[str, ...], infrastructure: str) -> int:
    """SHA-256 of files, computed on the cluster (printed as sha256sum does)."""
    records = [_settings().client.checksum_file(infrastructure, path) for path in paths]
    if _settings().as_json:
        emit_json(records if len(records) > 1 else records[0])
    else:
        for path, record in zip(paths, records, strict=True):
            click.echo(f"{record['sha256']}  {path}")
    return EXIT_OK


# -- events ----------------------------------------------------------------------------------------------


def _event_line(event: Mapping[str, Any]) -> str:
    """One line per event: time, id, type, resource, and what changed."""
    data = event.get("data") or {}
    resource = event.get("resource") or {}
    if event.get("type", "").endswith(".state"):
        what = f"{data.get('old_state') or '-'} -> {data.get('state')}"
        if data.get("exit_code") is not None:
            what += f" (exit {data['exit_code']})"
        if data.get("reason"):
            what += f": {data['reason']}"
    elif event.get("type") == "transfer.progress":
        what = _bytes_text(data) + (f" at {data['rate'] / 1e6:.1f} MB/s" if data.get("rate") else "")
    elif event.get("type") == "job.output":
        what = ("final output" if data.get("final") else "output growing") + f" ({data.get('state')})"
    else:
        what = json.dumps(data, sort_keys=True)
    return (f"{_short_time(event.get('time'))}  {event.get('id'):>6}  {event.get('type', ''):<17} "
            f"{resource.get('kind', '')} {resource.get('id', '')}  {what}")


@cli.command("events")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until interrupted.")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Only this job's events (repeatable).")
@click.option("--transfer", "transfers", multiple=True, metavar="ID", help="Only this transfer's events (repeatable).")
@click.option("--kind", type=click.Choice(["job", "transfer"]), help="Only events of jobs or of transfers.")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only these types: job.state, job.output, transfer.state, transfer.progress (repeatable).")
@click.option("--after", "last_event_id", type=click.IntRange(0), metavar="ID",
              help="Start after this event id (with --follow, default: the next new event).")
@client_options
def events(follow: bool, jobs: tuple[str, ...], transfers: tuple[str, ...], kind: str | None,
           types: tuple[str, ...], last_event_id: int | None) -> int:
    """Print events: state changes, transfer progress, job output availability.

    \b
    Without --follow: the stored events (after --after), then exit. With --follow: then every new event
    as it happens; a dropped connection is resumed without a gap. --json prints one JSON document a line.
    """
    settings = _settings()
    stream = settings.client.events(kind=kind, resource_id=list(jobs + transfers) or None, type=list(types) or None,
                                    last_event_id=last_event_id, follow=follow)
    for event in stream:
        if settings.as_json:
            click.echo(json.dumps(event, sort_keys=True))
        else:
            click.echo(_event_line(event))
        sys.stdout.flush()
    return EXIT_OK


# -- tokens, audit log, webhook subscriptions -----------------------------------------------------------
# Secrets (a new token, a subscription's signing secret) are printed once, on stdout, in the answer that
# made them, and nowhere else: never on stderr, in a table or in an error message.


class _TokenGroup(click.Group):
    """``token NAME [--role R]`` without a subcommand keeps its old meaning: ``token config NAME``."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["config", *args]
        return super().resolve_command(ctx, args)


@cli.group(cls=_TokenGroup)
def token() -> None:
    """Tokens made through the API (create, list, show, revoke: admin), or a configured one (config).

    \b
    'token NAME --role R' (no subcommand) is 'token config NAME --role R'.
    """


@token.command("config")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print token and hash as JSON.")
def token_config(name: str, role: str, as_json: bool) -> int:
    """Make a new API token for NAME, and the salted hash the gateway is configured with (offline)."""
    from hpc.security import hash_token, new_token

    secret = new_token()
    hashed = hash_token(secret)
    if as_json or _settings().as_json:
        emit_json({"name": name, "role": role, "token": secret, "hash": hashed,
                   "env": f"HPC_TOKENS={name}:{role}:{hashed}"})
        return EXIT_OK
    click.echo(f"token: {secret}")
    click.echo(f"configure: {{name: {name}, role: {role}, hash: '{hashed}'}}")
    click.echo(f"or in the environment: HPC_TOKENS={name}:{role}:{hashed}")
    return EXIT_OK


TOKEN_COLUMNS = [
    ("ID", "id"), ("NAME", "name"), ("ROLE", "role"), ("STATE", "state"), ("BY", "created_by"),
    ("CREATED", lambda r: _short_time(r.get("created_at"))), ("EXPIRES", lambda r: _short_time(r.get("expires_at"))),
]
_DURATION = re.compile(r"^([0-9]{1,6})([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _moment(value: str | None, option: str, *, future: bool) -> str | None:
    """An ISO 8601 time as given, or a duration (``90m``, ``12h``, ``7d``) from now (ahead or back)."""
    from datetime import datetime, timedelta

    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if match:
        delta = timedelta(seconds=int(match.group(1)) * _SECONDS[match.group(2)])
        now = datetime.now(UTC).replace(microsecond=0)
        return (now + delta if future else now - delta).isoformat().replace("+00:00", "Z")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("expected an ISO 8601 time (2026-01-01T00:00:00Z) or a duration (30m, 12h, 7d)",
                                 param_hint=option) from None
    if moment.tzinfo is None:
        raise click.BadParameter("give the time zone, e.g. 2026-01-01T00:00:00Z", param_hint=option)
    return moment.isoformat()


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "user"]), default="user", show_default=True)
@click.option("--expires", metavar="TIME|DURATION", help="When it stops working: ISO time, or 12h, 30d from now.")
@client_options
def token_create(name: str, role: str, expires: str | None) -> int:
    """Make a token for principal NAME through the gateway (admin); its secret is shown once."""
    record = _settings().client.create_token(name, role, expires_at=_moment(expires, "--expires", future=True))

    def human(r: Mapping[str, Any]) -> None:
        show_mapping({key: value for key, value in r.items() if key != "token"})
        click.echo(f"token: {r['token']}")
        click.echo("(shown once: the gateway keeps only a salted hash)")

    emit(record, human)
    return EXIT_OK


@token.command("list")
@click.option("--active", "active_only", is_flag=True, help="Leave out revoked tokens.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def token_list(active_only: bool, limit: int, offset: int) -> int:
    """List the tokens made through the API (admin), newest first; never their secrets."""
    page = _settings().client.list_tokens(include_revoked=False if active_only else None, limit=limit, offset=offset)
    emit(page, lambda p: show_table(p["items"], TOKEN_COLUMNS, "no token"))
    return EXIT_OK


@token.command("show")
@click.argument("token_id", metavar="ID")
@client_options
def token_show(token_id: str) -> int:
    """Show one token made through the API (admin)."""
    emit(_settings().client.get_token(token_id), show_mapping)
    return EXIT_OK


@token.command("revoke")
@click.argument("token_ids", nargs=-1, required=True, metavar="ID...")
@client_options
def token_revoke(token_ids: tuple[str, ...]) -> int:
    """Revoke tokens (admin): refused everywhere within a second; their event streams end."""
    client = _settings().client
    records = [client.revoke_token(token_id) for token_id in token_ids]
    if _settings().as_json:
        emit_json(records if len(records) > 1 else records[0])
    else:
        for record in records:
            click.echo(f"revoked {record['id']} ({record['name']}, {record['role']})")
    return EXIT_OK


AUDIT_COLUMNS = [
    ("AT", lambda r: _short_time(r.get("at"))), ("ACTION", "action"), ("PRINCIPAL", "principal"),
    ("CREDENTIAL", "credential"), ("TARGET", "target"),
    ("DETAILS", lambda r: json.dumps(r["details"], sort_keys=True) if r.get("details") else ""),
]


@cli.command("audit")
@click.option("--since", metavar="TIME|DURATION", help="Only actions at or after: ISO time, or 2h, 7d ago.")
@click.option("--action", help="Only this action, e.g. token.revoke, infrastructure.register.")
@click.option("--principal", help="Only the actions of this principal.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def audit(since: str | None, action: str | None, principal: str | None, limit: int, offset: int) -> int:
    """Administrative actions (admin), newest first: who did what to what, and when."""

    def human(page: Mapping[str, Any]) -> None:
        show_table(page["items"], AUDIT_COLUMNS, "no action recorded")
        if page["total"] > len(page["items"]):
            click.echo(f"({len(page['items'])} of {page['total']}; --offset {offset + len(page['items'])} for more)")

    emit(_settings().client.audit(action=action, principal=principal, since=_moment(since, "--since", future=False),
                                  limit=limit, offset=offset), human)
    return EXIT_OK


@cli.group()
def subscription() -> None:
    """Webhook subscriptions: events POSTed, signed, to a URL (create, list, show, delete)."""


SUBSCRIPTION_COLUMNS = [
    ("ID", "id"), ("URL", "url"), ("TYPES", lambda r: ",".join(r.get("types") or []) or "all"),
    ("DELIVERED", lambda r: (r.get("deliveries") or {}).get("delivered", "")),
    ("DEAD", lambda r: (r.get("deliveries") or {}).get("dead", "")), ("LAST ERROR", "last_error"),
]


@subscription.command("create")
@click.argument("target_url", metavar="URL")
@click.option("--type", "types", multiple=True, metavar="TYPE",
              help="Only these types: job.state, job.output, transfer.state, transfer.progress (repeatable).")
@click.option("--job", "jobs", multiple=True, metavar="ID", help="Only this job's events (repeatable).")
@click.option("--transfer", "transfers", multiple=True, metavar="ID", help="Only this transfer's events (repeatable).")
@client_options
def subscription_create(target_url: str, types: tuple[str, ...], jobs: tuple[str, ...],
                        transfers: tuple[str, ...]) -> int:
    """Have the gateway POST matching events to URL; the signing secret is shown once."""
    record = _settings().client.create_subscription(target_url, types=list(types) or None,
                                                    resource_ids=list(jobs + transfers) or None)

    def human(r: Mapping[str, Any]) -> None:
        show_mapping({key: value for key, value in r.items() if key != "secret"})
        click.echo(f"secret: {r['secret']}")
        click.echo("(shown once: check each delivery's X-HPC-Signature with it)")

    emit(record, human)
    return EXIT_OK


@subscription.command("list")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0)
@client_options
def subscription_list(limit: int, offset: int) -> int:
    """List your webhook subscriptions (an admin: all), newest first."""
    emit(_settings().client.list_subscriptions(limit=limit, offset=offset),
         lambda page: show_table(page["items"], SUBSCRIPTION_COLUMNS, "no subscription"))
    return EXIT_OK


@subscription.command("show")
@click.argument("subscription_id", metavar="ID")
@client_options
def subscription_show(subscription_id: str) -> int:
    """Show a subscription: delivery counts, the last error, the latest dead letters."""
    emit(_settings().client.get_subscription(subscription_id), show_mapping)
    return EXIT_OK


@subscription.command("delete")
@click.argument("subscription_ids", nargs=-1, required=True, metavar="ID...")
@client_options
def subscription_delete(subscription_ids: tuple[str, ...]) -> int:
    """Delete subscriptions: no more deliveries; undelivered ones are dropped."""
    client = _settings().client
    for subscription_id in subscription_ids:
        client.delete_subscription(subscription_id)
        if not _settings().as_json:
            click.echo(f"deleted {subscription_id}")
    if _settings().as_json:
        emit_json({"deleted": list(subscription_ids)})
    return EXIT_OK


# -- the database schema (hpc/cli_db.py) ----------------------------------------------------------------

from hpc.cli_db import db as _db_commands  # noqa: E402  (its own module: kept apart from the client commands)

cli.add_command(_db_commands)


# -- entry point -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Runs the command; returns its exit code (see the module's docstring)."""
    from hpc.client import ClientError

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        result = cli.main(argv, prog_name="hpc-gateway", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("hpc-gateway: interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code
    except ClientError as exc:
        from hpc.client import ApiError

        settings = _STATE.get("settings")
        if isinstance(exc, ApiError) and settings is not None and settings.as_json:
            emit_json(exc.problem or {"status": exc.status, "title": exc.title, "detail": exc.detail})
        click.echo(f"hpc-gateway: {exc}", err=True)
        return EXIT_API
    except KeyboardInterrupt:
        click.echo("hpc-gateway: interrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    if isinstance(result, int):
        return result
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
