"""Connections to the scores database: PostgreSQL in production, an SQLite file by default."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from clazzify.core.errors import ConfigError

#: Where ``clazzify`` keeps its scores unless told otherwise (relative to the working folder).
DEFAULT_DB_URL = "sqlite:///.clazzify/scores.db"

# Chunk size for IN (...) lists; far below SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 500


def normalise_url(url: str) -> str:
    """Accept the URLs people type and pick the bundled drivers.

    ``postgresql://`` and ``postgres://`` use psycopg 3; a bare path is an SQLite file.

    Raises:
        ConfigError: the URL cannot be parsed or names an unsupported database.
    """
    if "://" not in url:
        url = f"sqlite:///{url}"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"cannot parse database URL {url!r}: {e}") from e
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"database {parsed.get_backend_name()!r} is not supported: use "
            "postgresql://user@host/db or sqlite:///path/to/scores.db"
        )
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str) -> Engine:
    """An engine that survives database restarts and concurrent SQLite writers."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets readers (the query commands) run while a worker writes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(
        url,
        pool_pre_ping=True,  # a restarted server leaves dead pooled connections behind
        pool_size=2,
        max_overflow=2,
        connect_args={"connect_timeout": 5},
    )


def is_transient(error: BaseException) -> bool:
    """True for database failures that a retry can fix (down, restarting, locked)."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)



def upsert(engine: Engine, table: sa.Table):  # -> an Insert with on_conflict_* methods
    """An INSERT with the dialect's ``ON CONFLICT`` methods."""
    if engine.url.get_backend_name() == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    """``items`` in slices short enough for an ``IN (...)`` list."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database)


def missing_database_hint(url: str, error: BaseException) -> str:
    """One line for a database that cannot be opened, with the fix when it is missing."""
    first = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    parsed = make_url(normalise_url(url))
    shown = parsed.set(drivername=parsed.get_backend_name()).render_as_string(hide_password=True)
    if "does not exist" in first and parsed.get_backend_name() == "postgresql":
        host = f" -h {parsed.host}" if parsed.host else ""
        port = f" -p {parsed.port}" if parsed.port else ""
        user = f" -U {parsed.username}" if parsed.username else ""
        return (
            f"cannot open the scores database {shown}: {first}. Create it first: "
            f"createdb{host}{port}{user} {parsed.database} (the workers create the tables)"
        )
    return (
        f"cannot open the scores database {shown}: {first}. Is the server running and "
        "--db / CLAZZIFY_DB_URL right?"
    )
