"""Alembic migrations of the scores database (run by :func:`clazzify.scoring.schema.upgrade_database`)."""
