"""Persistence: SQLAlchemy Core tables behind small repository classes."""

from hpc.store.db import SCHEMA_VERSION, SchemaError, make_engine, migrate
from hpc.store.repositories import DuplicateKey, Store


def open_store(url: str) -> Store:
    """Opens the database at ``url``, creating or upgrading its schema."""
    engine = make_engine(url)
    migrate(engine)
    return Store(engine)


__all__ = ["SCHEMA_VERSION", "SchemaError", "DuplicateKey", "Store", "make_engine", "migrate", "open_store"]
