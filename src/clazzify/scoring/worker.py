"""Score upload events: fetch the bytes, ask the model server, write the scores.

:func:`process_batch` is the whole job of a worker for one batch of queue messages,
with its dependencies passed in (endpoint client, score repository, fetch function),
so it is tested without a broker. It returns one :class:`Outcome` per message and
never raises for a message's sake; the AMQP loop (:mod:`clazzify.scoring.consumer`) turns
outcomes into acks, dead letters and retries:

- ``scored`` / ``skipped``: the scores are committed; acknowledge.
- ``dead``: nothing can ever score this message (bad JSON, missing object, not an
  image, rejected by the server); recorded in ``dead_letters`` in the same commit,
  then published to the dead-letter queue and acknowledged.
- ``retry``: a dependency failed (server down or 5xx, timeout, database down);
  nothing was written for this message; do not acknowledge, try again later.

The backfill (:func:`clazzify.scoring.backfill.score_collection`) reuses :func:`score_events`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy.exc

from clazzify.core import storage
from clazzify.core.errors import ConfigError, StorageError
from clazzify.scoring.endpoint_client import EndpointError, Prediction
from clazzify.scoring.events import EventError, UploadEvent, parse_message
from clazzify.scoring.scores import Batch, DeadLetter, ImageRow, ScoreRow, is_transient

log = logging.getLogger(__name__)

#: S3 error codes that mean the object is not there and never will be.
_MISSING_CODES = {"NoSuchKey", "NoSuchObject", "NoSuchBucket", "NotFound", "InvalidObjectName"}


class Scorer(Protocol):
    """What :func:`process_batch` needs from an endpoint client."""

    def infer(self, images: Sequence[bytes]) -> Prediction: ...


class Repository(Protocol):
    """What :func:`process_batch` needs from a score repository."""

    def save(self, batch: Batch) -> None: ...


Fetch = Callable[[str], bytes]


@dataclass(frozen=True)
class ScoringConfig:
    """Limits of one scoring round.

    Attributes:
        request_images: most images in one inference request.
        request_concurrency: requests of one batch sent at the same time.
        request_bytes: most image bytes in one inference request (the model server
            refuses large bodies: 10 MiB by default); a larger image goes alone.
        fetch_threads: parallel downloads of image bytes (object storage is I/O bound).
        max_image_bytes: larger objects are dead-lettered as ``too_large``, never sent.
        default_model_name: stored when the server's response names no model.
    """

    request_images: int = 16
    request_concurrency: int = 2
    request_bytes: int = 8_000_000
    fetch_threads: int = 8
    max_image_bytes: int = 8_000_000
    default_model_name: str = "clazzify"

    def __post_init__(self) -> None:
        if self.request_images < 1:
            raise ConfigError(f"request_images must be >= 1, got {self.request_images}")
        if self.request_concurrency < 1:
            raise ConfigError(
                f"request_concurrency must be >= 1, got {self.request_concurrency}"
            )
        if self.request_bytes < 1:
            raise ConfigError(f"request_bytes must be >= 1, got {self.request_bytes}")
        if self.fetch_threads < 1:
            raise ConfigError(f"fetch_threads must be >= 1, got {self.fetch_threads}")
        if self.max_image_bytes < 1:
            raise ConfigError(f"max_image_bytes must be >= 1, got {self.max_image_bytes}")


@dataclass(frozen=True)
class Failure:
    """Why an event was not scored.

    Attributes:
        retry: True when a retry can succeed (a dependency failed), False when never.
        reason: short category: ``missing_object``, ``invalid_image``, ``endpoint_unavailable``...
    """

    retry: bool
    reason: str
    detail: str


@dataclass(frozen=True)
class EventResult:
    """The result of one event: a score, or the failure."""

    event: UploadEvent
    score: ScoreRow | None = None
    failure: Failure | None = None


@dataclass(frozen=True)
class Message:
    """One queue message; ``tag`` is the broker's handle, opaque here."""

    body: bytes
    tag: Any = None


@dataclass(frozen=True)
class Outcome:
    """What became of one message.

    Attributes:
        status: ``scored``, ``skipped`` (nothing to score), ``dead`` or ``retry``.
        scored: images scored (and committed) from this message.
    """

    status: str
    reason: str = ""
    detail: str = ""
    scored: int = 0

    @property
    def acknowledge(self) -> bool:
        return self.status != "retry"


@dataclass
class BatchStats:
    """Counts and timings of one :func:`process_batch` call, for logs and metrics."""

    messages: int = 0
    events: int = 0
    scored: int = 0
    dead: int = 0
    retry: int = 0
    fetch_s: float = 0.0
    infer_s: float = 0.0
    save_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)


def classify_fetch_error(error: Exception) -> Failure:
    """Missing objects are permanent; an unreachable or misconfigured store is retried."""
    cause = error.__cause__ if isinstance(error, StorageError) else error
    code = getattr(cause, "code", None)
    if code in _MISSING_CODES:
        return Failure(False, "missing_object", str(error))
    if isinstance(cause, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return Failure(False, "missing_object", str(error))
    return Failure(True, "storage_unavailable", f"{error.__class__.__name__}: {error}")


def _fetch_all(
    events: Sequence[UploadEvent], fetch: Fetch, cfg: ScoringConfig
) -> list[bytes | Failure]:
    def one(event: UploadEvent) -> bytes | Failure:
        try:
            data = fetch(event.uri)
        except (StorageError, OSError) as e:
            return classify_fetch_error(e)
        except Exception as e:  # noqa: BLE001 - urllib3/minio raise many types for a dead endpoint
            return Failure(True, "storage_unavailable", f"{e.__class__.__name__}: {e}")
        if not data:
            return Failure(False, "invalid_image", f"{event.uri} is empty (0 bytes)")
        if len(data) > cfg.max_image_bytes:
            return Failure(
                False,
                "too_large",
                f"{event.uri} is {len(data)} bytes; the limit is {cfg.max_image_bytes}",
            )
        return data

    if len(events) <= 1 or cfg.fetch_threads == 1:
        return [one(e) for e in events]
    with ThreadPoolExecutor(max_workers=min(cfg.fetch_threads, len(events))) as pool:
        return list(pool.map(one, events))


def _infer_isolating(
    client: Scorer, images: Sequence[bytes]
) -> list[tuple[Prediction, int] | Failure]:
    """Score ``images``; when the server rejects a batch, split it to find the bad ones.

    Returns one entry per image: ``(prediction, row)`` or a permanent :class:`Failure`.

    Raises:
        EndpointError: a retryable failure (transient or configuration).
    """
    try:
        prediction = client.infer(images)
    except EndpointError as e:
        if e.retryable:
            raise
        if len(images) == 1:
            reason = {400: "invalid_image", 413: "too_large"}.get(e.status or 0, "rejected")
            return [Failure(False, reason, str(e))]
        mid = len(images) // 2
        return _infer_isolating(client, images[:mid]) + _infer_isolating(client, images[mid:])
    return [(prediction, row) for row in range(len(images))]


def _request_chunks(
    indices: Sequence[int], sizes: Sequence[int], cfg: ScoringConfig
) -> list[list[int]]:
    """Split ``indices`` (with byte ``sizes``, same order) into requests within both limits."""
    chunks: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in zip(indices, sizes, strict=True):
        if current and (len(current) >= cfg.request_images or total + size > cfg.request_bytes):
            chunks.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        chunks.append(current)
    return chunks


def score_events(
    events: Sequence[UploadEvent],
    client: Scorer,
    fetch: Fetch = storage.read_bytes,
    cfg: ScoringConfig = ScoringConfig(),
    stats: BatchStats | None = None,
) -> list[EventResult]:
    """Fetch and score ``events``; one result per event, in order. Writes nothing."""
    stats = stats if stats is not None else BatchStats()
    started = time.perf_counter()
    fetched = _fetch_all(events, fetch, cfg)
    stats.fetch_s += time.perf_counter() - started
    results: list[EventResult | None] = [
        EventResult(e, failure=f) if isinstance(f, Failure) else None
        for e, f in zip(events, fetched, strict=True)
    ]
    todo = [i for i, r in enumerate(results) if r is None]
    started = time.perf_counter()
    chunks = _request_chunks(todo, [len(f) for f in fetched if isinstance(f, bytes)], cfg)

    def infer(chunk: list[int]) -> list[tuple[Prediction, int] | Failure] | EndpointError:
        try:
            return _infer_isolating(client, [fetched[i] for i in chunk])  # type: ignore[misc]
        except EndpointError as e:
            return e

    if len(chunks) > 1 and cfg.request_concurrency > 1:
        # Requests in flight together let the server decode one while it infers another.
        with ThreadPoolExecutor(max_workers=min(cfg.request_concurrency, len(chunks))) as pool:
            replies = list(pool.map(infer, chunks))
    else:
        replies = [infer(chunk) for chunk in chunks]
    for chunk, answers in zip(chunks, replies, strict=True):
        if isinstance(answers, EndpointError):
            e = answers
            reason = "endpoint_misconfigured" if e.kind == "config" else "endpoint_unavailable"
            if e.kind == "config":
                log.error("model server contract or configuration error: %s", e)
            for i in chunk:
                results[i] = EventResult(events[i], failure=Failure(True, reason, str(e)))
            continue
        for i, answer in zip(chunk, answers, strict=True):
            event = events[i]
            if isinstance(answer, Failure):
                results[i] = EventResult(event, failure=answer)
                continue
            prediction, row = answer
            probabilities = {
                name: float(p)
                for name, p in zip(
                    prediction.class_names, prediction.probabilities[row], strict=True
                )
            }
            results[i] = EventResult(
                event,
                score=ScoreRow(
                    image_id=event.image_id,
                    model_name=prediction.model_name or cfg.default_model_name,
                    model_version=prediction.model_version,
                    probabilities=probabilities,
                    source_uri=event.uri,
                ),
            )
    stats.infer_s += time.perf_counter() - started
    return [r for r in results if r is not None]


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Delay before retry ``attempt`` (0-based): doubling from ``initial_s``, capped."""
    return min(max_s, initial_s * (2 ** min(attempt, 30)))


def _body_text(body: bytes, limit: int = 10_000) -> str:
    return body[:limit].decode("utf-8", errors="replace")


def add_results(batch: Batch, results: Sequence[EventResult], body: str = "") -> Batch:
    """Add scored events (image + score) and failed ones (dead letter) to ``batch``."""
    for r in results:
        e = r.event
        if r.score is not None:
            batch.images.append(ImageRow(e.image_id, e.uri, e.restaurant_id, e.source))
            batch.scores.append(r.score)
        elif r.failure is not None:
            batch.dead_letters.append(
                DeadLetter(r.failure.reason, r.failure.detail, body, e.image_id, e.uri)
            )
    return batch


def _batch_for(pairs: Sequence[tuple[Message, list[EventResult] | EventError]]) -> Batch:
    batch = Batch()
    for message, results in pairs:
        if isinstance(results, EventError):
            batch.dead_letters.append(
                DeadLetter(results.reason, str(results), _body_text(message.body))
            )
        else:
            add_results(batch, results, _body_text(message.body))
    return batch


def _final_outcome(results: list[EventResult] | EventError) -> Outcome:
    if isinstance(results, EventError):
        return Outcome("dead", results.reason, str(results))
    scored = sum(r.score is not None for r in results)
    dead = [r.failure for r in results if r.failure is not None]
    if dead:
        return Outcome("dead", dead[0].reason, dead[0].detail, scored=scored)
    return Outcome("scored" if scored else "skipped", scored=scored)


def process_batch(
    messages: Sequence[Message],
    client: Scorer,
    repo: Repository,
    *,
    fetch: Fetch = storage.read_bytes,
    cfg: ScoringConfig = ScoringConfig(),
    stats: BatchStats | None = None,
) -> list[Outcome]:
    """Score a batch of queue messages and commit the results in one transaction.

    Args:
        messages: raw queue messages (JSON upload events).
        client: the model server client.
        repo: where scores and dead letters are written.
        fetch: reads an image's bytes from its URI.
        cfg: request size, download threads, size limit.
        stats: filled with counts and timings when given.

    Returns:
        one :class:`Outcome` per message, in order. A message is ``retry`` when any of
        its events met a retryable failure or the commit failed transiently; nothing of
        it is written then, so a later attempt starts clean.
    """
    stats = stats if stats is not None else BatchStats()
    stats.messages += len(messages)
    per_message: list[list[EventResult] | EventError] = []
    flat: list[tuple[int, UploadEvent]] = []
    for m, message in enumerate(messages):
        try:
            flat.extend((m, e) for e in parse_message(message.body))
            per_message.append([])
        except EventError as e:
            per_message.append(e)
    stats.events += len(flat)
    results = score_events([e for _, e in flat], client, fetch, cfg, stats)
    for (m, _), result in zip(flat, results, strict=True):
        per_message[m].append(result)  # type: ignore[union-attr]

    outcomes: dict[int, Outcome] = {}
    for m, res in enumerate(per_message):
        retry = (
            None
            if isinstance(res, EventError)
            else next((r.failure for r in res if r.failure and r.failure.retry), None)
        )
        if retry is not None:
            outcomes[m] = Outcome("retry", retry.reason, retry.detail)
    writable = [m for m in range(len(messages)) if m not in outcomes]
    outcomes.update(_commit(messages, per_message, writable, repo, stats))

    final = [outcomes[m] for m in range(len(messages))]
    for o, res in zip(final, per_message, strict=True):
        if o.status in ("retry", "dead"):
            setattr(stats, o.status, getattr(stats, o.status) + 1)
            stats.reasons[o.reason] = stats.reasons.get(o.reason, 0) + 1
        if o.scored and isinstance(res, list):
            stats.scored += o.scored
            for r in res:
                if r.score is not None:
                    v = r.score.model_version
                    stats.model_versions[v] = stats.model_versions.get(v, 0) + 1
    return final


def _commit(
    messages: Sequence[Message],
    per_message: list[list[EventResult] | EventError],
    writable: list[int],
    repo: Repository,
    stats: BatchStats,
) -> dict[int, Outcome]:
    """Write the ``writable`` messages in one transaction; the outcome of each."""
    if not writable:
        return {}
    started = time.perf_counter()
    try:
        repo.save(_batch_for([(messages[m], per_message[m]) for m in writable]))
    except sqlalchemy.exc.SQLAlchemyError as e:
        detail = f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if is_transient(e):
            return {m: Outcome("retry", "db_unavailable", detail) for m in writable}
        if len(writable) > 1:
            # The database refuses a row (not a transient failure): commit message by
            # message so one bad message cannot hold the others back.
            out: dict[int, Outcome] = {}
            for m in writable:
                out.update(_commit(messages, per_message, [m], repo, stats))
            return out
        m = writable[0]
        try:
            repo.save(
                Batch(
                    dead_letters=[DeadLetter("db_rejected", detail, _body_text(messages[m].body))]
                )
            )
        except sqlalchemy.exc.SQLAlchemyError as e2:
            return {m: Outcome("retry", "db_unavailable", f"{e2.__class__.__name__}: {e2}")}
        return {m: Outcome("dead", "db_rejected", detail)}
    finally:
        stats.save_s += time.perf_counter() - started
    return {m: _final_outcome(per_message[m]) for m in writable}
