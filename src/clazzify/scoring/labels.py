"""Manual labels: what people say a photo is, with a history of every change and an undo.

``manual_labels`` holds the current label of each photo (the last write wins);
``label_history`` keeps every write, grouped by decision (a batch id), so a moderator's
``u`` reverts their newest decision and nothing is overwritten without a trace.

A moderator's "not a class" mark is a manual label like any other (history, undo, last
write wins) whose value is :data:`NOT_A_CLASS`. It is never a class: the training path
(:meth:`LabelStore.manual_labels`, :func:`read_manual_labels`) leaves it out, and
:func:`read_not_a_class_marks` hands those photos to the next run as out-of-distribution
examples.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clazzify.core.errors import StorageError

# NOT_A_CLASS: the manual label of a photo a moderator marked "not one of the classes" (its
# definition is in core, which training reads too). Not a valid class name for the review
# app, and never read as a class label by training, relabel export or import.
from clazzify.core.ood import NOT_A_CLASS
from clazzify.scoring.database import chunks, create_db_engine, upsert
from clazzify.scoring.schema import images, label_history, manual_labels, utcnow

#: First key of the advisory locks that serialise label writes per photo (PostgreSQL).
_LABEL_LOCK_SPACE = 0x6C61  # "la"


@dataclass(frozen=True)
class LabelChange:
    """One write to ``manual_labels``, as ``label_history`` records it."""

    image_id: str
    old_label: str | None
    new_label: str | None
    action: str


class LabelStore:
    """Writes and reads of manual labels; thread-safe like its engine."""

    engine: Engine

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

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
            for chunk in chunks(remove):
                conn.execute(sa.delete(manual_labels).where(manual_labels.c.image_id.in_(chunk)))
            # Skipped photos get an ``undo_skipped`` row: the trace says why nothing changed,
            # and the batch counts as handled so the next `u` moves to the decision before.
            self._append_history(conn, changes + kept, labelled_by, now, uuid.uuid4().hex,
                                 undoes=batch_id)
        return changes, [c.image_id for c in kept]

    def manual_labels(
        self, since: datetime | None = None, *, not_a_class: bool = False
    ) -> list[dict[str, Any]]:
        """The current manual label of every photo (last write wins), with the photo's URI.

        What the next training run learns from (``clazzify ingest --labels-from``) and what
        the retraining trigger counts.

        Args:
            since: only labels given after this time.
            not_a_class: False (the default): class labels only, "not a class" marks
                left out; True: only the marks.

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
        if not_a_class:
            query = query.where(manual_labels.c.label == NOT_A_CLASS)
        else:
            query = query.where(manual_labels.c.label != NOT_A_CLASS)
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
            for chunk in chunks(ordered):
                conn.execute(
                    sa.text("SELECT count(pg_advisory_xact_lock(:space, hashtext(x))) FROM "
                            "(SELECT x FROM unnest(CAST(:ids AS text[])) AS t(x) ORDER BY x) AS s"),
                    {"space": _LABEL_LOCK_SPACE, "ids": list(chunk)},
                )
        found: dict[str, str] = {}
        for chunk in chunks(ordered):
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
        stmt = upsert(self.engine, manual_labels)
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


def read_manual_labels(url: str, since: datetime | None = None, *, not_a_class: bool = False) -> list[dict[str, Any]]:
    """:meth:`LabelStore.manual_labels` of the database at ``url`` (opened, read, closed;
    the schema is not migrated: a reader never changes the database). Class labels only,
    or with ``not_a_class`` the "not a class" marks only (their photos to train on:
    :func:`read_not_a_class_marks`)."""
    return _read(url, lambda store: store.manual_labels(since, not_a_class=not_a_class))


def read_not_a_class_marks(url: str, since: datetime | None = None) -> list[tuple[str, str]]:
    """``(image_id, uri)`` of every photo whose current manual label is :data:`NOT_A_CLASS`.

    What the next training run reads as extra out-of-distribution examples, never as a
    class. Photos whose URI the database does not know are left out (nothing to read).
    An undone mark is gone (the label is the one before it, or none).

    Raises:
        StorageError: the database cannot be read (names the URL and the fix).
    """
    rows = _read(url, lambda store: store.manual_labels(since, not_a_class=True))
    return [(str(r["image_id"]), str(r["uri"])) for r in rows if r.get("uri")]


def _read(url: str, read: Any) -> Any:
    try:
        engine = create_db_engine(url)
        try:
            return read(LabelStore(engine))
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(
            f"cannot read manual labels from {url}: {reason}; check the URL and that the scores "
            "database exists (its schema is created by the workers)"
        ) from e
