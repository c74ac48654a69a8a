"""The scores database's tables, and the migrations that create them.

Tables (created by the Alembic migrations in :mod:`clazzify.scoring.migrations`):

- ``images``: one row per photo: ``image_id``, ``uri``, ``restaurant_id``, ``source``.
  A photo's ``uri`` never changes once written: an event naming a known id with another
  URI is dead-lettered (``id_conflict``).
- ``scores``: one row per (``image_id``, ``model_name``, ``model_version``): top ``label``
  and its ``probability``, ``source_uri``, ``scored_at`` (first write), ``updated_at``
  (last write) and ``writes`` (how many times the row was written: redeliveries after a
  crash show up here, never as a second row).
  ``unknown`` (the model flagged the photo as none of its classes; NULL: the model has no
  out-of-distribution score) and ``in_distribution_score`` (higher: more like the classes).
- ``score_probabilities``: the probability of every class for each score.
- ``manual_labels``: the current label people gave a photo (moderators, relabel imports);
  the last write wins.
- ``label_history``: every write to ``manual_labels`` (who, when, old and new label, action),
  so nothing is overwritten without a trace; an undo is a row of its own.
- ``review_users``: the review app's accounts (argon2 password hashes, role, session
  generation).
- ``review_login_throttle``: failed logins per account and per client address, and locks.
- ``dead_letters``: messages that could never be scored, with the reason.

Views (documented in docs/scoring.md, created by the migrations): ``latest_scores``,
``class_scores`` (photos flagged unknown left out), ``image_labels``, ``unknown_images``.

Writes live in :mod:`clazzify.scoring.scores` (scores and images),
:mod:`clazzify.scoring.labels` (manual labels) and :mod:`clazzify.scoring.dead_letters`;
connections in :mod:`clazzify.scoring.database`.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

#: Key of the PostgreSQL advisory lock that serialises concurrent migrations.
_MIGRATION_LOCK_KEY = 0x636C617A7A  # "clazz"

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
    # The model's out-of-distribution verdict (migration 0004): True when it flagged the photo
    # as none of its classes (V2 label "unknown"), False when it scored it as in-distribution,
    # NULL when the model has no such score (older models).
    sa.Column("unknown", sa.Boolean),
    sa.Column("in_distribution_score", sa.Float),
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
    # Carried in each session cookie; bumped by "log out everywhere" and a password change.
    sa.Column("session_generation", sa.Integer, nullable=False, server_default="0"),
)

review_login_throttle = sa.Table(
    "review_login_throttle",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_at", sa.Float, nullable=False),
    sa.Column("locked_until", sa.Float),
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

