"""Alembic migrations of the pulid-bot schema (run through ``storage.db.upgrade``)."""
