"""The scores database: PostgreSQL in production, an SQLite file as the embedded default.

Tables (created by the Alembic migrations in :mod:`clazzify.scoring.migrations`):

- ``images``: one row per photo: ``image_id``, ``uri``, ``restaurant_id``, ``source``.
- ``scores``: one row per (``image_id``, ``model_name``, ``model_version``): top ``label``
  and its ``probability``, ``source_uri``, ``scored_at`` (first write), ``updated_at``
  (last write) and ``writes`` (how many times the row was written: redeliveries after a
  crash show up here, never as a second row).
- ``score_probabilities``: the probability of every class for each score.
- ``manual_labels``: the current label people gave a photo (moderators, relabel imports);
  the last write wins.
- ``label_history``: every write to ``manual_labels`` (who, when, old and new label, action),
  so nothing is overwritten without a trace; an undo is a row of its own.
- ``review_users``: the review app's accounts (argon2 password hashes, role).
- ``dead_letters``: messages that could never be scored, with the reason.

Views (documented in the README): ``latest_scores``, ``class_scores``, ``image_labels``.

Every write is an idempotent upsert inside one transaction, so a batch that is
written twice (the worker died between the commit and the ack) leaves the same rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from clazzify.core.errors import ConfigError, StorageError

#: Where ``clazzify`` keeps its scores unless told otherwise (relative to the working folder).
DEFAULT_DB_URL = "sqlite:///.clazzify/scores.db"

#: Key of the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK_KEY = 0x636C617A7A  # "clazz"

#: First key of the advisory locks that serialise label writes per photo (PostgreSQL).
_LABEL_LOCK_SPACE = 0x6C61  # "la"

# Chunk size for IN (...) lists; far below SQLite's and PostgreSQL's parameter limits.
_IN_CHUNK = 500

metadata = sa.MetaData()

images = sa.Table(
    "images",
    metadata,
    sa.Column("image_id", sa.String(512), primary_key=True),
    sa.Column("uri", sa.String(2048), nullable=False),
    sa.Column("restaurant_id", sa.String(512)),
    sa.Column("source", sa.String(512)),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
)
sa.Index("ix_images_restaurant_id", images.c.restaurant_id)

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("image_id", sa.String(512), primary_key=True),
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("probability", sa.Float, nullable=False),
    sa.Column("source_uri", sa.String(2048), nullable=False),
    sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("writes", sa.Integer, nullable=False, server_default="1"),
)
# The review queues page by (probability, image_id) inside one model version (keyset).
sa.Index(
    "ix_scores_queue_label",
    scores.c.model_name,
    scores.c.model_version,
    scores.c.label,
    scores.c.probability,
    scores.c.image_id,
)
sa.Index(
    "ix_scores_queue_probability",
    scores.c.model_name,
    scores.c.model_version,
    scores.c.probability,
    scores.c.image_id,
)

score_probabilities = sa.Table(
    "score_probabilities",
    metadata,
    sa.Column("image_id", sa.String(512), primary_key=True),
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("class_name", sa.String(128), primary_key=True),
    sa.Column("probability", sa.Float, nullable=False),
)
sa.Index(
    "ix_score_probabilities_class",
    score_probabilities.c.model_name,
    score_probabilities.c.class_name,
    score_probabilities.c.probability,
)

manual_labels = sa.Table(
    "manual_labels",
    metadata,
    sa.Column("image_id", sa.String(512), primary_key=True),
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("labelled_by", sa.String(128)),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
)

label_history = sa.Table(
    "label_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_id", sa.String(512), nullable=False),
    sa.Column("old_label", sa.String(128)),
    sa.Column("new_label", sa.String(128)),  # None: an undo removed the label
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("labelled_by", sa.String(128)),
    sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
    # One decision (a key press, a bulk accept, an import) shares a batch id; `u` undoes one.
    sa.Column("batch_id", sa.String(32), nullable=False),
    sa.Column("undoes", sa.String(32)),  # on undo rows: the batch id they reverted
)
sa.Index("ix_label_history_image", label_history.c.image_id, label_history.c.id)
sa.Index("ix_label_history_user", label_history.c.labelled_by, label_history.c.id)
sa.Index("ix_label_history_time", label_history.c.labelled_at)
sa.Index("ix_label_history_undoes", label_history.c.undoes)

review_users = sa.Table(
    "review_users",
    metadata,
    sa.Column("username", sa.String(128), primary_key=True),
    sa.Column("password_hash", sa.String(256), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

dead_letters = sa.Table(
    "dead_letters",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("image_id", sa.String(512)),
    sa.Column("uri", sa.String(2048)),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class ImageRow:
    """What is known about a photo apart from its scores."""

    image_id: str
    uri: str
    restaurant_id: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class ScoreRow:
    """One model's verdict on one photo.

    Attributes:
        probabilities: class name -> probability, for every class of the model.
    """

    image_id: str
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    source_uri: str

    def __post_init__(self) -> None:
        if not self.probabilities:
            raise ConfigError(f"score of {self.image_id!r} has no class probabilities")

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def probability(self) -> float:
        return self.probabilities[self.label]


@dataclass(frozen=True)
class LabelChange:
    """One write to ``manual_labels``, as ``label_history`` records it."""

    image_id: str
    old_label: str | None
    new_label: str | None
    action: str


@dataclass(frozen=True)
class DeadLetter:
    """A message that can never be scored, and why."""

    reason: str
    detail: str
    body: str
    image_id: str | None = None
    uri: str | None = None


@dataclass
class Batch:
    """Everything one transaction writes."""

    images: list[ImageRow] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images or self.scores or self.dead_letters)


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


@contextlib.contextmanager
def _sqlite_file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate-lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upgrade_database(engine: Engine, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision``; safe to run from many workers at once."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "clazzify.scoring:migrations")
    with _sqlite_file_lock(engine), engine.begin() as conn:
        if engine.url.get_backend_name() == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def _insert(engine: Engine, table: sa.Table):  # -> an Insert with on_conflict_* methods
    if engine.url.get_backend_name() == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ScoreRepository:
    """Reads and idempotent writes of scores; one per process, thread-safe like its engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str, *, migrate: bool = True) -> ScoreRepository:
        """Connect to ``url`` and bring its schema up to date.

        Raises:
            ConfigError: the URL is invalid.
            sqlalchemy.exc.OperationalError: the database cannot be reached.
        """
        engine = create_db_engine(url)
        if migrate:
            upgrade_database(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    # -- writes ---------------------------------------------------------------------------

    def save(self, batch: Batch) -> None:
        """Write images, scores and dead letters in one transaction (all or nothing).

        Rows are sorted by key so two workers writing overlapping batches (a redelivery)
        lock rows in the same order and cannot deadlock.
        """
        if not batch:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            if batch.images:
                rows = {i.image_id: i for i in batch.images}
                stmt = _insert(self.engine, images)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[images.c.image_id],
                    set_={
                        "uri": stmt.excluded.uri,
                        "restaurant_id": sa.func.coalesce(
                            stmt.excluded.restaurant_id, images.c.restaurant_id
                        ),
                        "source": sa.func.coalesce(stmt.excluded.source, images.c.source),
                    },
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "image_id": r.image_id,
                            "uri": r.uri,
                            "restaurant_id": r.restaurant_id,
                            "source": r.source,
                            "first_seen_at": now,
                        }
                        for _, r in sorted(rows.items())
                    ],
                )
            if batch.scores:
                by_key = {(s.image_id, s.model_name, s.model_version): s for s in batch.scores}
                ordered = [by_key[k] for k in sorted(by_key)]
                stmt = _insert(self.engine, scores)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[scores.c.image_id, scores.c.model_name, scores.c.model_version],
                    set_={
                        "label": stmt.excluded.label,
                        "probability": stmt.excluded.probability,
                        "source_uri": stmt.excluded.source_uri,
                        "updated_at": stmt.excluded.updated_at,
                        "writes": scores.c.writes + 1,
                    },
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "image_id": s.image_id,
                            "model_name": s.model_name,
                            "model_version": s.model_version,
                            "label": s.label,
                            "probability": float(s.probability),
                            "source_uri": s.source_uri,
                            "scored_at": now,
                            "updated_at": now,
                            "writes": 1,
                        }
                        for s in ordered
                    ],
                )
                stmt = _insert(self.engine, score_probabilities)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[
                        score_probabilities.c.image_id,
                        score_probabilities.c.model_name,
                        score_probabilities.c.model_version,
                        score_probabilities.c.class_name,
                    ],
                    set_={"probability": stmt.excluded.probability},
                )
                conn.execute(
                    stmt,
                    [
                        {
                            "image_id": s.image_id,
                            "model_name": s.model_name,
                            "model_version": s.model_version,
                            "class_name": name,
                            "probability": float(p),
                        }
                        for s in ordered
                        for name, p in sorted(s.probabilities.items())
                    ],
                )
            if batch.dead_letters:
                conn.execute(
                    sa.insert(dead_letters),
                    [
                        {
                            "reason": d.reason,
                            "detail": d.detail,
                            "body": d.body,
                            "image_id": d.image_id,
                            "uri": d.uri,
                            "dead_at": now,
                        }
                        for d in batch.dead_letters
                    ],
                )

    def add_manual_labels(
        self, labels: Iterable[tuple[str, str]], labelled_by: str | None = None
    ) -> int:
        """Record people's labels ``(image_id, label)``; a newer label replaces an older one."""
        changes = self.record_labels(labels, labelled_by=labelled_by, action="import")
        return len(changes)

    def record_labels(
        self,
        labels: Iterable[tuple[str, str]],
        *,
        labelled_by: str | None,
        action: str,
    ) -> list[LabelChange]:
        """Set the current label of each photo and append the change to ``label_history``.

        The last write wins in ``manual_labels``; every write (even one that repeats the
        current label) stays in the history under one batch id, which ``undo_last`` reverts.
        """
        rows = {image_id: label for image_id, label in labels}
        if not rows:
            return []
        batch_id = uuid.uuid4().hex
        now = utcnow()
        ids = sorted(rows)
        with self.engine.begin() as conn:
            current = self._current_labels(conn, ids)
            self._write_labels(conn, [(i, rows[i]) for i in ids], labelled_by, now)
            changes = [LabelChange(i, current.get(i), rows[i], action) for i in ids]
            self._append_history(conn, changes, labelled_by, now, batch_id)
        return changes

    def undo_last(self, labelled_by: str) -> tuple[list[LabelChange], list[str]]:
        """Revert ``labelled_by``'s newest decision that is not undone yet.

        A photo someone else relabelled since is left alone (last write wins) and reported.

        Returns:
            The changes made, and the image ids skipped because of a newer label.
        """
        h = label_history
        undone = sa.select(h.c.undoes).where(h.c.undoes.is_not(None), h.c.labelled_by == labelled_by)
        with self.engine.begin() as conn:
            batch_id = conn.scalar(
                sa.select(h.c.batch_id)
                .where(h.c.labelled_by == labelled_by, h.c.undoes.is_(None),
                       h.c.batch_id.not_in(undone))
                .order_by(h.c.id.desc())
                .limit(1)
            )
            if batch_id is None:
                return [], []
            decided = conn.execute(
                sa.select(h.c.image_id, h.c.old_label, h.c.new_label)
                .where(h.c.batch_id == batch_id)
                .order_by(h.c.image_id)
            ).all()
            current = self._current_labels(conn, [r.image_id for r in decided])
            changes, kept = [], []
            for image_id, old_label, new_label in decided:
                now_label = current.get(image_id)
                if now_label != new_label:
                    kept.append(LabelChange(image_id, now_label, now_label, "undo_skipped"))
                    continue
                changes.append(LabelChange(image_id, new_label, old_label, "undo"))
            now = utcnow()
            restore = [(c.image_id, c.new_label) for c in changes if c.new_label is not None]
            remove = [c.image_id for c in changes if c.new_label is None]
            self._write_labels(conn, restore, labelled_by, now)
            for chunk in _chunks(remove):
                conn.execute(sa.delete(manual_labels).where(manual_labels.c.image_id.in_(chunk)))
            # Skipped photos get an ``undo_skipped`` row: the trace says why nothing changed,
            # and the batch counts as handled so the next `u` moves to the decision before.
            self._append_history(conn, changes + kept, labelled_by, now, uuid.uuid4().hex,
                                 undoes=batch_id)
        return changes, [c.image_id for c in kept]

    def manual_labels(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """The current manual label of every photo (last write wins), with the photo's URI.

        What the next training run learns from (``clazzify ingest --labels-from``) and what
        the retraining trigger counts.

        Args:
            since: only labels given after this time.

        Returns:
            rows of ``image_id, uri, label, labelled_by, labelled_at``, by ``image_id``;
            ``uri`` is None for a photo the images table does not know.
        """
        query = (
            sa.select(manual_labels.c.image_id, images.c.uri, manual_labels.c.label,
                      manual_labels.c.labelled_by, manual_labels.c.labelled_at)
            .select_from(manual_labels.outerjoin(images, images.c.image_id == manual_labels.c.image_id))
            .order_by(manual_labels.c.image_id)
        )
        if since is not None:
            query = query.where(manual_labels.c.labelled_at > since)
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]

    def _current_labels(self, conn: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
        """The current labels of ``ids``, locked until the transaction ends.

        On PostgreSQL a transaction-scoped advisory lock per photo (taken in id order, so two
        writers cannot deadlock) also covers photos without a label yet, which FOR UPDATE
        cannot lock: two moderators labelling a new photo at once then write the history in
        turn, the second row's ``old_label`` being the first one's label. SQLite runs one
        writer at a time anyway.
        """
        ordered = sorted(set(ids))
        if conn.dialect.name == "postgresql":
            for chunk in _chunks(ordered):
                conn.execute(
                    sa.text("SELECT count(pg_advisory_xact_lock(:space, hashtext(x))) FROM "
                            "(SELECT x FROM unnest(CAST(:ids AS text[])) AS t(x) ORDER BY x) AS s"),
                    {"space": _LABEL_LOCK_SPACE, "ids": list(chunk)},
                )
        found: dict[str, str] = {}
        for chunk in _chunks(ordered):
            query = sa.select(manual_labels.c.image_id, manual_labels.c.label).where(
                manual_labels.c.image_id.in_(chunk)
            )
            found.update(dict(conn.execute(query).tuples().all()))
        return found

    def _write_labels(
        self, conn: sa.Connection, rows: list[tuple[str, str]], labelled_by: str | None,
        now: datetime,
    ) -> None:
        if not rows:
            return
        stmt = _insert(self.engine, manual_labels)
        stmt = stmt.on_conflict_do_update(
            index_elements=[manual_labels.c.image_id],
            set_={
                "label": stmt.excluded.label,
                "labelled_by": stmt.excluded.labelled_by,
                "labelled_at": stmt.excluded.labelled_at,
            },
        )
        conn.execute(
            stmt,
            [
                {"image_id": i, "label": lbl, "labelled_by": labelled_by, "labelled_at": now}
                for i, lbl in rows
            ],
        )

    def _append_history(
        self, conn: sa.Connection, changes: list[LabelChange], labelled_by: str | None,
        now: datetime, batch_id: str, *, undoes: str | None = None,
    ) -> None:
        rows = [
            {
                "image_id": c.image_id,
                "old_label": c.old_label,
                "new_label": c.new_label,
                "action": c.action,
                "labelled_by": labelled_by,
                "labelled_at": now,
                "batch_id": batch_id,
                "undoes": undoes,
            }
            for c in changes
        ]
        if rows:
            conn.execute(sa.insert(label_history), rows)

    # -- reads ----------------------------------------------------------------------------

    def scored_ids(self, model_name: str, model_version: str, image_ids: Sequence[str]) -> set[str]:
        """Which of ``image_ids`` already have a score from this model version."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(list(image_ids)):
                found.update(
                    conn.scalars(
                        sa.select(scores.c.image_id).where(
                            scores.c.model_name == model_name,
                            scores.c.model_version == model_version,
                            scores.c.image_id.in_(chunk),
                        )
                    )
                )
        return found

    def count_scores(self, model_name: str | None = None, model_version: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(scores)
        if model_name is not None:
            query = query.where(scores.c.model_name == model_name)
        if model_version is not None:
            query = query.where(scores.c.model_version == model_version)
        with self.engine.connect() as conn:
            return int(conn.scalar(query) or 0)

    def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            return [dict(row._mapping) for row in result]

    def restaurant_images(
        self,
        restaurant_id: str,
        label: str,
        *,
        model_name: str,
        min_probability: float = 0.0,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """Photos of a restaurant whose predicted label is ``label``, most confident first."""
        return self._rows(
            "SELECT image_id, uri, probability, model_version, scored_at FROM class_scores "
            "WHERE restaurant_id = :restaurant AND model_name = :model AND label = :label "
            "AND class_name = :label AND probability >= :min_p "
            "ORDER BY probability DESC, image_id LIMIT :limit",
            {
                "restaurant": restaurant_id,
                "model": model_name,
                "label": label,
                "min_p": min_probability,
                "limit": limit,
            },
        )

    def review_queue(
        self, labels: Sequence[str], *, model_name: str, min_probability: float, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Photos with probability >= ``min_probability`` for any of ``labels``, most likely first.

        A photo likely to be both a person and a menu appears once per queue.
        """
        query = sa.text(
            "SELECT class_name AS queue, image_id, uri, restaurant_id, probability, label, "
            "model_version, scored_at FROM class_scores "
            "WHERE model_name = :model AND class_name IN :labels AND probability >= :min_p "
            "ORDER BY class_name, probability DESC, image_id LIMIT :limit"
        ).bindparams(sa.bindparam("labels", expanding=True))
        with self.engine.connect() as conn:
            result = conn.execute(
                query,
                {
                    "model": model_name,
                    "labels": list(labels),
                    "min_p": min_probability,
                    "limit": limit,
                },
            )
            return [dict(row._mapping) for row in result]

    def relabel_candidates(
        self, *, model_name: str, max_probability: float, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Low-confidence photos and photos whose prediction disagrees with a manual label.

        Disagreements come first, then the least confident predictions.
        """
        return self._rows(
            "SELECT image_id, uri, restaurant_id, label AS predicted_label, probability, "
            "manual_label, model_version, disagrees FROM image_labels "
            "WHERE model_name = :model AND (probability < :max_p OR disagrees = 1) "
            "ORDER BY disagrees DESC, probability ASC, image_id LIMIT :limit",
            {"model": model_name, "max_p": max_probability, "limit": limit},
        )

    def class_names(self, model_name: str) -> list[str]:
        """Every class this model has given a probability for."""
        query = (
            sa.select(score_probabilities.c.class_name)
            .where(score_probabilities.c.model_name == model_name)
            .distinct()
            .order_by(score_probabilities.c.class_name)
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def dead_letter_rows(self, limit: int = 100) -> list[dict[str, Any]]:
        query = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def read_manual_labels(url: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """:meth:`ScoreRepository.manual_labels` of the database at ``url`` (opened, read, closed;
    the schema is not migrated: a reader never changes the database)."""
    try:
        repo = ScoreRepository.open(url, migrate=False)
        try:
            return repo.manual_labels(since)
        finally:
            repo.close()
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(
            f"cannot read manual labels from {url}: {reason}; check the URL and that the scores "
            "database exists (its schema is created by the workers)"
        ) from e
