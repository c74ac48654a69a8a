"""Alembic migrations of the scores database (run by :func:`clazzify.scores.upgrade_database`)."""
