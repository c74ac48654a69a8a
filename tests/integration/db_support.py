"""Read a scores database from a test: one helper for every integration test."""

from __future__ import annotations

import sqlalchemy as sa

from clazzify.scoring.database import create_db_engine


def query(db_url: str, sql: str) -> list[tuple]:
    """Run ``sql`` on the database at ``db_url`` (a fresh engine, disposed); its rows."""
    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(sql))]
    finally:
        engine.dispose()
