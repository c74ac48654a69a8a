"""The tables ``scores.py`` declares are the tables the Alembic migrations build.

The repository writes through the SQLAlchemy ``metadata`` in :mod:`clazzify.scoring.schema`;
the database gets its schema only from the migrations. Alembic's own ``compare_metadata``
(what ``alembic revision --autogenerate`` uses) lists every difference between the two
(tables, columns, types, nullability, server defaults, indexes) on SQLite and PostgreSQL.
An empty list is the pass; a change to one side without the other fails here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from worker_support import fresh_pg_database

from clazzify.scoring.database import create_db_engine
from clazzify.scoring.schema import metadata, upgrade_database

pytestmark = pytest.mark.integration


def schema_drift(engine: sa.Engine, target: sa.MetaData) -> list:
    """Alembic's differences between the migrated database behind ``engine`` and ``target``."""
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        return compare_metadata(context, target)


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A fresh database of each kind, upgraded to the newest migration."""
    if request.param == "sqlite":
        engine = create_db_engine(f"sqlite:///{tmp_path}/scores.db")
        upgrade_database(engine)
        yield engine
        engine.dispose()
        return
    with fresh_pg_database() as url:
        engine = create_db_engine(url)
        upgrade_database(engine)
        yield engine
        engine.dispose()


def test_the_migrations_build_what_scores_py_declares(migrated: sa.Engine) -> None:
    assert schema_drift(migrated, metadata) == []


def test_the_drift_check_can_fail(migrated: sa.Engine) -> None:
    """A column, a type and an index changed in the declarations only: each one is caught."""
    planted = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(planted)
    scores = planted.tables["scores"]
    scores.append_column(sa.Column("reviewed", sa.Boolean))
    scores.c.label.type = sa.String(64)
    sa.Index("ix_dead_letters_reason", planted.tables["dead_letters"].c.reason)
    found = {(d[0], d[2]) if d[0] == "add_column" else d[0] for d in _flat(schema_drift(migrated, planted))}
    assert ("add_column", "scores") in found
    assert "modify_type" in found and "add_index" in found


def _flat(diffs: list) -> Iterator[tuple]:
    """compare_metadata nests column modifications in a list; flatten to single tuples."""
    for d in diffs:
        if isinstance(d, list):
            yield from d
        else:
            yield d
