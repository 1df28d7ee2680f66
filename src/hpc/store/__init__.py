"""Persistence: SQLAlchemy Core tables behind small repository classes."""

from hpc.store.db import SchemaError, current_revision, head_revision, make_engine, migrate
from hpc.store.repositories import DuplicateKey, Store


def open_store(url: str) -> Store:
    """Opens the database at ``url``, creating or upgrading its schema."""
    engine = make_engine(url)
    migrate(engine)
    return Store(engine)


__all__ = ["SchemaError", "DuplicateKey", "Store", "current_revision", "head_revision", "make_engine", "migrate",
           "open_store"]
