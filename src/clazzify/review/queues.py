"""The review queues as SQL: keyset pages, counts, stats and the label export.

Every queue lists the scores of one model version, ordered by ``(probability, image_id)``,
least confident first; a page starts after the last row of the previous one (keyset
pagination), so page 500 costs what page 1 costs. The ``ix_scores_queue_*`` indexes of
migration 0002 serve that order.

Queues:

- ``low``: top probability below the threshold;
- ``class``: one predicted class (``human`` -> photo moderation, ``menu`` -> content team);
  photos the model flagged as none of its classes are in no class queue;
- ``unknown``: "Not one of the classes": photos the model flagged as none of its classes;
- ``disagree``: photos whose label differs between this version and another one;
- ``unreviewed``: every photo without a manual label.

Each can be narrowed to one restaurant and one source, and to pending photos (no manual
label yet, the default) or all of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from clazzify.core.errors import ConfigError
from clazzify.scoring.schema import images, label_history, manual_labels, score_probabilities, scores

KINDS = ("low", "class", "unknown", "disagree", "unreviewed")


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: strictly after ``(probability, image_id)``."""

    probability: float
    image_id: str

    def encode(self) -> str:
        return f"{self.probability!r}:{self.image_id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Parse ``probability:image_id`` as written by :meth:`encode`.

        Raises:
            ConfigError: the text is not such a cursor.
        """
        head, sep, image_id = text.partition(":")
        try:
            probability = float(head)
        except ValueError:
            probability = math.nan
        if not sep or not math.isfinite(probability):
            raise ConfigError(f"bad page cursor {text!r}: expected 'probability:image_id'")
        return cls(probability, image_id)


@dataclass(frozen=True)
class Queue:
    """One queue and its filters.

    Attributes:
        kind: one of :data:`KINDS`.
        label: the predicted class, for ``kind='class'``.
        restaurant: only this restaurant's photos.
        source: only photos from this source (the ``source`` an event carried).
        pending: only photos without a manual label.
    """

    kind: str
    label: str | None = None
    restaurant: str | None = None
    source: str | None = None
    pending: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"unknown queue {self.kind!r}: choose one of {', '.join(KINDS)}")
        if (self.kind == "class") != bool(self.label):
            raise ConfigError("a 'class' queue needs a label, and only it takes one")


@dataclass(frozen=True)
class Scope:
    """Which scores the queues read.

    Attributes:
        model_name: the model the workers score with.
        version: the model version whose predictions are reviewed.
        other_version: the version the ``disagree`` queue compares with (None: no queue).
        low_threshold: top probabilities below this go to the ``low`` queue.
    """

    model_name: str
    version: str
    other_version: str | None
    low_threshold: float


@dataclass(frozen=True)
class Card:
    """One photo on a page."""

    image_id: str
    uri: str
    restaurant_id: str | None
    source: str | None
    label: str
    probability: float
    manual_label: str | None
    labelled_by: str | None
    other_label: str | None = None
    unknown: bool | None = None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.probability, self.image_id)


def _card_query(scope: Scope, with_other: bool) -> tuple[sa.Select, Any]:
    s = scores.alias("s")
    other = scores.alias("o")
    columns = [
        s.c.image_id,
        sa.func.coalesce(images.c.uri, s.c.source_uri).label("uri"),
        images.c.restaurant_id,
        images.c.source,
        s.c.label,
        s.c.probability,
        manual_labels.c.label.label("manual_label"),
        manual_labels.c.labelled_by,
        s.c.unknown,
    ]
    joined = s.outerjoin(images, images.c.image_id == s.c.image_id).outerjoin(
        manual_labels, manual_labels.c.image_id == s.c.image_id
    )
    if with_other:
        columns.append(other.c.label.label("other_label"))
        joined = joined.join(
            other,
            sa.and_(
                other.c.image_id == s.c.image_id,
                other.c.model_name == s.c.model_name,
                other.c.model_version == scope.other_version,
            ),
        )
    query = sa.select(*columns).select_from(joined).where(
        s.c.model_name == scope.model_name, s.c.model_version == scope.version
    )
    return query, (s, other)


def page(
    conn: sa.Connection, scope: Scope, queue: Queue, *, after: Cursor | None = None, limit: int = 100
) -> tuple[list[Card], Cursor | None]:
    """One page of ``queue``; returns the cards and the cursor of the next page (None: last).

    Raises:
        ConfigError: a ``disagree`` queue without another version to compare with.
    """
    if queue.kind == "disagree" and scope.other_version is None:
        raise ConfigError(
            f"the disagreement queue needs a second version of {scope.model_name!r}; "
            "only one has scores"
        )
    query, (s, other) = _card_query(scope, with_other=queue.kind == "disagree")
    query = _filtered(query, scope, queue, s, other)
    if after is not None:
        query = query.where(sa.tuple_(s.c.probability, s.c.image_id) > (after.probability, after.image_id))
    query = query.order_by(s.c.probability, s.c.image_id).limit(limit + 1)
    rows = [Card(**row._mapping) for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, rows[-1].cursor if more else None


def _filtered(query: sa.Select, scope: Scope, queue: Queue, s: Any, other: Any) -> sa.Select:
    if queue.kind == "low":
        query = query.where(s.c.probability < scope.low_threshold)
    elif queue.kind == "class":
        query = query.where(s.c.label == queue.label, _in_distribution(s))
    elif queue.kind == "unknown":
        query = query.where(s.c.unknown.is_(sa.true()))
    elif queue.kind == "disagree":
        query = query.where(other.c.label != s.c.label)
    if queue.pending or queue.kind == "unreviewed":
        query = query.where(manual_labels.c.image_id.is_(None))
    if queue.restaurant:
        query = query.where(images.c.restaurant_id == queue.restaurant)
    if queue.source:
        query = query.where(images.c.source == queue.source)
    return query


def _in_distribution(s: Any) -> Any:
    """Not flagged as none of the classes (a model without a verdict flags nothing)."""
    return sa.or_(s.c.unknown.is_(None), s.c.unknown.is_(sa.false()))


def cards(conn: sa.Connection, scope: Scope, image_ids: Sequence[str]) -> list[Card]:
    """The cards of these photos (those with a score of ``scope.version``), in id order."""
    if not image_ids:
        return []
    query, (s, _) = _card_query(scope, with_other=False)
    query = query.where(s.c.image_id.in_(list(image_ids))).order_by(s.c.image_id)
    return [Card(**row._mapping) for row in conn.execute(query)]


@dataclass(frozen=True)
class Counts:
    """Queue sizes: ``pending`` photos (no manual label) and ``total`` per queue.

    ``by_class`` maps each predicted class to ``(pending, total)``, photos flagged as none
    of the classes left out: they are counted in ``unknown``.
    """

    low: tuple[int, int]
    unreviewed: tuple[int, int]
    disagree: tuple[int, int] | None
    by_class: dict[str, tuple[int, int]]
    unknown: tuple[int, int] = (0, 0)


def counts(conn: sa.Connection, scope: Scope, restaurant: str | None = None,
           source: str | None = None) -> Counts:
    """Count every queue in two passes over the version's scores."""
    s = scores.alias("s")
    pending = manual_labels.c.image_id.is_(None)
    low = s.c.probability < scope.low_threshold

    def n(condition: Any) -> Any:
        return sa.func.sum(sa.case((condition, 1), else_=0))

    joined = s.outerjoin(manual_labels, manual_labels.c.image_id == s.c.image_id)
    if restaurant or source:
        joined = joined.join(images, images.c.image_id == s.c.image_id)

    def scoped(query: sa.Select) -> sa.Select:
        query = query.where(s.c.model_name == scope.model_name, s.c.model_version == scope.version)
        if restaurant:
            query = query.where(images.c.restaurant_id == restaurant)
        if source:
            query = query.where(images.c.source == source)
        return query

    by_class: dict[str, tuple[int, int]] = {}
    low_n = [0, 0]
    unknown_n = [0, 0]
    flagged = s.c.unknown.is_(sa.true())
    unreviewed = 0
    query = scoped(
        sa.select(s.c.label, n(pending), sa.func.count(), n(sa.and_(low, pending)), n(low),
                  n(sa.and_(flagged, pending)), n(flagged))
        .select_from(joined)
    ).group_by(s.c.label)
    for label, pend, total, low_pend, low_total, unk_pend, unk_total in conn.execute(query):
        unk_pend, unk_total = int(unk_pend or 0), int(unk_total or 0)
        unreviewed += int(pend or 0)
        by_class[label] = (int(pend or 0) - unk_pend, int(total) - unk_total)
        low_n[0] += int(low_pend or 0)
        low_n[1] += int(low_total or 0)
        unknown_n[0] += unk_pend
        unknown_n[1] += unk_total
    disagree = None
    if scope.other_version is not None:
        other = scores.alias("o")
        joined_other = joined.join(
            other,
            sa.and_(other.c.image_id == s.c.image_id, other.c.model_name == s.c.model_name,
                    other.c.model_version == scope.other_version, other.c.label != s.c.label),
        )
        pend, total = conn.execute(
            scoped(sa.select(n(pending), sa.func.count()).select_from(joined_other))
        ).one()
        disagree = (int(pend or 0), int(total))
    return Counts(tuple(low_n), (unreviewed, unreviewed), disagree, by_class,  # type: ignore[arg-type]
                  tuple(unknown_n))  # type: ignore[arg-type]


def versions(conn: sa.Connection, model_name: str) -> list[str]:
    """The model's versions with scores, newest first (by their newest score)."""
    query = (
        sa.select(scores.c.model_version)
        .where(scores.c.model_name == model_name)
        .group_by(scores.c.model_version)
        .order_by(sa.func.max(scores.c.scored_at).desc(), scores.c.model_version.desc())
    )
    return list(conn.scalars(query))


def class_names(conn: sa.Connection, model_name: str) -> list[str]:
    """Every class the model gave a probability for (its predicted labels if none stored)."""
    query = (
        sa.select(score_probabilities.c.class_name)
        .where(score_probabilities.c.model_name == model_name)
        .distinct()
        .order_by(score_probabilities.c.class_name)
    )
    names = list(conn.scalars(query))
    if names:
        return names
    query = sa.select(scores.c.label).where(scores.c.model_name == model_name).distinct()
    return sorted(conn.scalars(query))


def model_labels(conn: sa.Connection, scope: Scope, image_ids: Sequence[str]) -> dict[str, str]:
    """The version's predicted label of each photo that has one."""
    if not image_ids:
        return {}
    query = sa.select(scores.c.image_id, scores.c.label).where(
        scores.c.model_name == scope.model_name,
        scores.c.model_version == scope.version,
        scores.c.image_id.in_(list(image_ids)),
    )
    return dict(conn.execute(query).tuples().all())


def unlabelled(conn: sa.Connection, image_ids: Sequence[str]) -> list[str]:
    """Those of ``image_ids`` that have no manual label."""
    if not image_ids:
        return []
    have = set(
        conn.scalars(sa.select(manual_labels.c.image_id).where(manual_labels.c.image_id.in_(list(image_ids))))
    )
    return [i for i in image_ids if i not in have]


def uri_of(conn: sa.Connection, image_id: str) -> str | None:
    """The URI the database holds for a photo (its images row, else a score's source)."""
    uri = conn.scalar(sa.select(images.c.uri).where(images.c.image_id == image_id))
    if uri is None:
        uri = conn.scalar(sa.select(scores.c.source_uri).where(scores.c.image_id == image_id).limit(1))
    return uri


def midnight_utc(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class Stats:
    """The stats page.

    Attributes:
        reviewed_today: class -> photos given that label today (UTC) and not undone.
        confusion: (model label, moderator label) -> photos, on photos moderators labelled.
        classes: the row and column order.
    """

    reviewed_today: dict[str, int]
    confusion: dict[tuple[str, str], int]
    classes: list[str]

    @property
    def agreement(self) -> tuple[int, int]:
        """(photos where model and moderator agree, photos moderators labelled)."""
        total = sum(self.confusion.values())
        same = sum(n for (m, h), n in self.confusion.items() if m == h)
        return same, total


def stats(conn: sa.Connection, scope: Scope, classes: Sequence[str], now: datetime | None = None) -> Stats:
    h = label_history
    undone = sa.select(h.c.undoes).where(h.c.undoes.is_not(None))
    query = (
        sa.select(h.c.new_label, sa.func.count(sa.distinct(h.c.image_id)))
        .where(h.c.labelled_at >= midnight_utc(now), h.c.undoes.is_(None),
               h.c.new_label.is_not(None), h.c.batch_id.not_in(undone))
        .group_by(h.c.new_label)
    )
    today = {label: int(n) for label, n in conn.execute(query)}
    query = (
        sa.select(scores.c.label, manual_labels.c.label, sa.func.count())
        .select_from(manual_labels.join(scores, scores.c.image_id == manual_labels.c.image_id))
        .where(scores.c.model_name == scope.model_name, scores.c.model_version == scope.version)
        .group_by(scores.c.label, manual_labels.c.label)
    )
    confusion = {(m, h_): int(n) for m, h_, n in conn.execute(query)}
    seen = set(classes) | set(today) | {k for pair in confusion for k in pair}
    ordered = list(classes) + sorted(seen - set(classes))
    return Stats(today, confusion, ordered)


EXPORT_FIELDS = ("image_id", "uri", "restaurant_id", "source", "label", "labelled_by", "labelled_at",
                 "model_version", "model_label", "model_probability")


def export_rows(conn: sa.Connection, scope: Scope) -> Iterator[dict[str, Any]]:
    """Every manual label with the photo and the version's prediction, streamed by image id."""
    s = scores.alias("s")
    joined = manual_labels.outerjoin(images, images.c.image_id == manual_labels.c.image_id).outerjoin(
        s,
        sa.and_(s.c.image_id == manual_labels.c.image_id, s.c.model_name == scope.model_name,
                s.c.model_version == scope.version),
    )
    query = (
        sa.select(
            manual_labels.c.image_id,
            sa.func.coalesce(images.c.uri, s.c.source_uri).label("uri"),
            images.c.restaurant_id,
            images.c.source,
            manual_labels.c.label,
            manual_labels.c.labelled_by,
            manual_labels.c.labelled_at,
            s.c.model_version,
            s.c.label.label("model_label"),
            s.c.probability.label("model_probability"),
        )
        .select_from(joined)
        .order_by(manual_labels.c.image_id)
    )
    for row in conn.execution_options(yield_per=1000).execute(query):
        yield dict(row._mapping)


#: Equal-width bins of the confidence histogram over [0, 1].
CONFIDENCE_BINS = 20


@dataclass(frozen=True)
class ChartData:
    """What the Stats charts draw, for one model version over the last ``days``.

    Attributes:
        days: the calendar days (UTC), oldest first.
        class_mix: day -> predicted class -> photos scored as that class (flagged ones out).
        unknown: day -> (photos flagged unknown, photos with a verdict at all).
        confidence: photos per top-probability bin, scored as a class / flagged unknown.
        agreement: model class -> day -> (photos moderators kept at the model's label,
            photos moderators labelled), by the day of the label.
    """

    days: list[Any]
    class_mix: dict[Any, dict[str, int]]
    unknown: dict[Any, tuple[int, int]]
    confidence: tuple[list[int], list[int]]
    agreement: dict[str, dict[Any, tuple[int, int]]]


def _day_of(conn: sa.Connection, column: Any) -> Any:
    """The UTC calendar day of a timestamp column, as text ``YYYY-MM-DD`` on both dialects."""
    if conn.dialect.name == "postgresql":
        return sa.func.to_char(sa.func.timezone("UTC", column), "YYYY-MM-DD")
    return sa.func.date(column)


def _bin_of(conn: sa.Connection, column: Any) -> Any:
    scaled = column * CONFIDENCE_BINS
    if conn.dialect.name == "postgresql":
        return sa.func.floor(scaled)
    return sa.cast(scaled, sa.Integer)  # SQLite truncates toward zero: floor for p >= 0


def chart_data(conn: sa.Connection, scope: Scope, days: int = 14, now: datetime | None = None) -> ChartData:
    """Read what :mod:`clazzify.review.charts` draws; four grouped queries over the version."""
    from datetime import date, timedelta

    today = midnight_utc(now)
    since = today - timedelta(days=days - 1)
    calendar = [(since + timedelta(days=i)).date() for i in range(days)]
    s = scores
    mine = sa.and_(s.c.model_name == scope.model_name, s.c.model_version == scope.version)
    day = _day_of(conn, s.c.scored_at)
    flagged = s.c.unknown.is_(sa.true())

    class_mix: dict[Any, dict[str, int]] = {}
    unknown: dict[Any, tuple[int, int]] = {}
    query = (
        sa.select(day.label("day"), s.c.label, sa.func.count(),
                  sa.func.sum(sa.case((flagged, 1), else_=0)),
                  sa.func.count(s.c.unknown))
        .where(mine, s.c.scored_at >= since)
        .group_by(day, s.c.label)
    )
    for d, label, total, n_flagged, judged in conn.execute(query):
        key = date.fromisoformat(str(d))
        n_flagged = int(n_flagged or 0)
        if int(total) - n_flagged:
            class_mix.setdefault(key, {})[label] = int(total) - n_flagged
        f0, j0 = unknown.get(key, (0, 0))
        unknown[key] = (f0 + n_flagged, j0 + int(judged or 0))

    in_dist, out = [0] * CONFIDENCE_BINS, [0] * CONFIDENCE_BINS
    bin_ = _bin_of(conn, s.c.probability)
    query = (
        sa.select(bin_.label("bin"), flagged.label("flagged"), sa.func.count())
        .where(mine, s.c.scored_at >= since)
        .group_by(bin_, flagged)
    )
    for b, is_flagged, n in conn.execute(query):
        i = min(max(int(b), 0), CONFIDENCE_BINS - 1)  # p == 1.0 goes to the top bin
        (out if is_flagged else in_dist)[i] += int(n)

    agreement: dict[str, dict[Any, tuple[int, int]]] = {}
    label_day = _day_of(conn, manual_labels.c.labelled_at)
    kept = sa.func.sum(sa.case((manual_labels.c.label == s.c.label, 1), else_=0))
    query = (
        sa.select(label_day.label("day"), s.c.label, kept, sa.func.count())
        .select_from(manual_labels.join(s, s.c.image_id == manual_labels.c.image_id))
        .where(mine, manual_labels.c.labelled_at >= since)
        .group_by(label_day, s.c.label)
    )
    for d, label, n_kept, n in conn.execute(query):
        agreement.setdefault(label, {})[date.fromisoformat(str(d))] = (int(n_kept or 0), int(n))
    return ChartData(calendar, class_mix, unknown, (in_dist, out), agreement)
