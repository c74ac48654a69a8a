"""Scores and photos: idempotent writes of a batch, and the queries the commands run.

Every write is an idempotent upsert inside one transaction, so a batch that is written
twice (the worker died between the commit and the ack) leaves the same rows. The tables
are in :mod:`clazzify.scoring.schema`; manual labels in :mod:`clazzify.scoring.labels`
(whose :class:`~clazzify.scoring.labels.LabelStore` a :class:`ScoreRepository` also is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from clazzify.core.errors import ConfigError
from clazzify.scoring.database import chunks, create_db_engine, upsert
from clazzify.scoring.dead_letters import DeadLetter, insert_dead_letters, read_dead_letters
from clazzify.scoring.labels import LabelStore
from clazzify.scoring.schema import images, score_probabilities, scores, upgrade_database, utcnow


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
        unknown: the model flagged the photo as none of its classes; None: the model gave
            no out-of-distribution verdict.
        in_distribution_score: the model's score (higher: more like the classes), if sent.
    """

    image_id: str
    model_name: str
    model_version: str
    probabilities: dict[str, float]
    source_uri: str
    unknown: bool | None = None
    in_distribution_score: float | None = None

    def __post_init__(self) -> None:
        if not self.probabilities:
            raise ConfigError(f"score of {self.image_id!r} has no class probabilities")

    @property
    def label(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def probability(self) -> float:
        return self.probabilities[self.label]


@dataclass
class Batch:
    """Everything one transaction writes."""

    images: list[ImageRow] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images or self.scores or self.dead_letters)


class ScoreRepository(LabelStore):
    """Reads and idempotent writes of scores (and, as a :class:`LabelStore`, of manual labels);
    one per process, thread-safe like its engine."""

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
                stmt = upsert(self.engine, images)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[images.c.image_id],
                    set_={
                        # Never "uri": a photo's URI never moves (the worker dead-letters
                        # a conflicting id; this keeps two racing writers from moving it).
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
                stmt = upsert(self.engine, scores)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[scores.c.image_id, scores.c.model_name, scores.c.model_version],
                    set_={
                        "label": stmt.excluded.label,
                        "probability": stmt.excluded.probability,
                        "source_uri": stmt.excluded.source_uri,
                        "updated_at": stmt.excluded.updated_at,
                        "writes": scores.c.writes + 1,
                        "unknown": stmt.excluded.unknown,
                        "in_distribution_score": stmt.excluded.in_distribution_score,
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
                            "unknown": s.unknown,
                            "in_distribution_score": s.in_distribution_score,
                        }
                        for s in ordered
                    ],
                )
                stmt = upsert(self.engine, score_probabilities)
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
            insert_dead_letters(conn, batch.dead_letters, now)

    # -- reads ----------------------------------------------------------------------------

    def image_uris(self, image_ids: Sequence[str]) -> dict[str, str]:
        """The stored URI of each of ``image_ids`` that is known."""
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(sorted(set(image_ids))):
                query = sa.select(images.c.image_id, images.c.uri).where(
                    images.c.image_id.in_(chunk)
                )
                found.update(dict(conn.execute(query).tuples().all()))
        return found

    def scored_ids(self, model_name: str, model_version: str, image_ids: Sequence[str]) -> set[str]:
        """Which of ``image_ids`` already have a score from this model version."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in chunks(list(image_ids)):
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

    def unknown_images(
        self, restaurant_id: str | None = None, *, model_name: str, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Photos whose latest score the model flagged as none of its classes.

        Least like the classes first (lowest ``in_distribution_score``; photos without a
        score last), then by id. ``restaurant_id``: only that restaurant's photos.
        """
        where = "model_name = :model"
        params: dict[str, Any] = {"model": model_name, "limit": limit}
        if restaurant_id is not None:
            where += " AND restaurant_id = :restaurant"
            params["restaurant"] = restaurant_id
        return self._rows(
            "SELECT image_id, uri, restaurant_id, top_class, top_probability, "
            "in_distribution_score, model_version, scored_at FROM unknown_images "
            f"WHERE {where} ORDER BY CASE WHEN in_distribution_score IS NULL THEN 1 ELSE 0 END, "
            "in_distribution_score, image_id LIMIT :limit",
            params,
        )

    def count_unknown(self, model_name: str, model_version: str) -> tuple[int, int]:
        """(photos flagged unknown, photos with a verdict at all) among this version's scores."""
        query = sa.select(
            sa.func.count().filter(scores.c.unknown.is_(sa.true())),
            sa.func.count(scores.c.unknown),
        ).where(scores.c.model_name == model_name, scores.c.model_version == model_version)
        with self.engine.connect() as conn:
            flagged, judged = conn.execute(query).one()
        return int(flagged or 0), int(judged or 0)

    def likely_photos(
        self, labels: Sequence[str], *, model_name: str, min_probability: float, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Photos whose probability of one of ``labels`` is at least ``min_probability``.

        Grouped by class (the ``queue`` column), most likely first; a photo likely to be
        both a person and a menu appears once per class. What ``clazzify review-queue``
        prints; the review page's queues are :mod:`clazzify.review.queues`.
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
        return read_dead_letters(self.engine, limit)
