"""Alembic migrations (installed as ``receiver.migrations``)."""
