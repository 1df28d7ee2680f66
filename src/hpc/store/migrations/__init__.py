"""Alembic revisions of the gateway's database schema (see README.md in this folder).

``hpc.store.db.migrate`` runs them at every start; ``hpc-gateway db upgrade`` runs them explicitly.
The revisions ship inside the package (``versions/``), so an installed gateway finds them.
"""
