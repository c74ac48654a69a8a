"""Alembic migrations of the scores database (run by :func:`clazzify.scoring.scores.upgrade_database`)."""
