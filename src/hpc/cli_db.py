"""``hpc-gateway db``: the database schema (Alembic revisions in ``hpc/store/migrations``).

``serve`` upgrades the schema by itself at start; these commands do it explicitly (before starting
several replicas, or to see where a database stands), and make a new revision after ``tables.py``
changed (in a source checkout).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import click

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

database_option = click.option(
    "--database-url", metavar="URL",
    help="SQLAlchemy URL [default: the configuration's database_url, else data_dir/gateway.db].")
config_option = click.option("--config", "config_path", metavar="FILE",
                             help="YAML configuration file [env: HPC_CONFIG].")


def _url(config_path: str | None, database_url: str | None) -> str:
    if database_url:
        return database_url
    from hpc.config import ConfigError, load_config

    try:
        return load_config(config_path).resolved_database_url
    except (ConfigError, OSError) as exc:
        raise click.UsageError(f"configuration error: {exc}") from None


def _where(url: str) -> str:
    """The URL without its password, for messages."""
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """The database schema: upgrade it, show its revision, add a revision."""


@db.command("upgrade")
@config_option
@database_option
def db_upgrade(config_path: str | None, database_url: str | None) -> int:
    """Create, adopt (release 1.0) or upgrade the schema to this gateway's newest revision."""
    from hpc.store import SchemaError, current_revision, make_engine, migrate

    url = _url(config_path, database_url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            before = current_revision(conn)
        head = migrate(engine)
    except SchemaError as exc:
        click.echo(f"hpc-gateway: {exc}", err=True)
        return EXIT_FAILED
    finally:
        engine.dispose()
    if before == head:
        click.echo(f"{_where(url)}: already at revision {head} (head)")
    else:
        click.echo(f"{_where(url)}: upgraded from revision {before or 'none'} to {head} (head)")
    return EXIT_OK


@db.command("current")
@config_option
@database_option
def db_current(config_path: str | None, database_url: str | None) -> int:
    """Show the database's revision and this gateway's head; exit 1 when an upgrade is due."""
    import sqlalchemy as sa

    from hpc.store import current_revision, head_revision, make_engine

    url = _url(config_path, database_url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            current = current_revision(conn)
            legacy = None
            if current is None and sa.inspect(conn).has_table("schema_version"):
                legacy = conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar()
    finally:
        engine.dispose()
    head = head_revision()
    if current is None:
        what = f"release 1.0 schema_version {legacy}, not yet under Alembic" if legacy else "empty"
        click.echo(f"{_where(url)}: {what} (head {head}): 'hpc-gateway db upgrade' or a start upgrades it")
        return EXIT_FAILED
    click.echo(f"{_where(url)}: revision {current}" + (" (head)" if current == head else f" (head {head})"))
    return EXIT_OK if current == head else EXIT_FAILED


@db.command("revision")
@click.argument("message")
def db_revision(message: str) -> int:
    """Write a new revision with the schema changes of tables.py that no revision has yet (a checkout).

    The revisions so far are run on a scratch SQLite database, Alembic compares the result with
    tables.py and writes the difference into hpc/store/migrations/versions/NNNN_MESSAGE.py. Read it
    before committing: a new NOT NULL column needs a server_default (or a data step) for existing rows.
    """
    from alembic import command

    from hpc.store import make_engine
    from hpc.store.db import alembic_config, script_directory

    numbers = [int(rev.revision) for rev in script_directory().walk_revisions() if rev.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    if not re.search(r"[A-Za-z0-9]", message):
        raise click.UsageError("MESSAGE must contain letters or digits")
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(f"sqlite:///{Path(scratch) / 'revisions.db'}")
        try:
            with engine.connect() as conn:
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
                script = command.revision(alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id)
        finally:
            engine.dispose()
    path = Path(script.path)
    if "op." not in path.read_text():
        click.echo("no schema difference from tables.py: the revision is empty (fill it for a data change)")
    return EXIT_OK
