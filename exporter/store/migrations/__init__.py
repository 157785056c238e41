"""Alembic migrations of the Flowscope store (run by :mod:`exporter.store.migrate`; no alembic.ini)."""
