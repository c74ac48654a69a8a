"""Score upload events: fetch the bytes, ask the model server, write the scores.

:func:`process_batch` is the whole job of a worker for one batch of queue messages,
with its dependencies passed in (endpoint client, score repository, fetch function),
so it is tested without a broker. Each message becomes a :class:`MessageResult` (its
events, then their results); the events of the whole batch are scored together, the
messages with no retryable failure are committed in one transaction, and one
:class:`Outcome` per message comes back. It never raises for a message's sake; the
AMQP loop (:mod:`clazzify.scoring.consumer`) turns outcomes into acks, dead letters and
retries:

- ``scored`` / ``skipped``: the scores are committed; acknowledge.
- ``dead``: nothing can ever score this message (bad JSON, a source outside the
  allow-list, a missing object or bucket, access denied, not a regular file, too large,
  not an image, rejected by the server, an image id already taken by another URI);
  recorded in ``dead_letters`` in the same commit, then published to the dead-letter
  queue and acknowledged.
- ``retry``: a dependency failed (server down or 5xx, timeout, database down);
  nothing was written for this message; do not acknowledge, try again later.

The backfill (:func:`clazzify.scoring.backfill.score_collection`) reuses :func:`score_unclaimed`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy.exc

from clazzify.core import storage
from clazzify.core.errors import ConfigError, StorageError
from clazzify.scoring.database import is_transient
from clazzify.scoring.dead_letters import DeadLetter
from clazzify.scoring.endpoint_client import EndpointError, Prediction
from clazzify.scoring.events import EventError, UploadEvent, parse_message
from clazzify.scoring.scores import Batch, ImageRow, ScoreRow
from clazzify.scoring.sources import SourceNotAllowed, SourcePolicy

log = logging.getLogger(__name__)


class Scorer(Protocol):
    """What :func:`process_batch` needs from an endpoint client."""

    def infer(self, images: Sequence[bytes]) -> Prediction: ...


class Repository(Protocol):
    """What :func:`process_batch` needs from a score repository."""

    def save(self, batch: Batch) -> None: ...

    def image_uris(self, image_ids: Sequence[str]) -> Mapping[str, str]: ...


#: Reads a URI's bytes; the worker's default is a bounded read of ``max_image_bytes``.
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
        sources: the allow-list of buckets and folders events may name (None: every
            location; the worker always sets one, the operator-driven backfill does not).
    """

    request_images: int = 16
    request_concurrency: int = 2
    request_bytes: int = 8_000_000
    fetch_threads: int = 8
    max_image_bytes: int = 8_000_000
    default_model_name: str = "clazzify"
    sources: SourcePolicy | None = None

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
    #: The committed scores of the batch (what the drift metrics count).
    committed: list[ScoreRow] = field(default_factory=list)


def classify_fetch_error(error: Exception) -> Failure:
    """Permanent by what it is (missing, refused, not a file, too large, not allowed);
    anything else (unreachable, timeout, 5xx) is transient and retried."""
    if isinstance(error, SourceNotAllowed):
        return Failure(False, error.reason, str(error))
    if isinstance(error, storage.PermanentStorageError):
        return Failure(False, error.reason, str(error))
    if isinstance(error, FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return Failure(False, "missing_object", str(error))
    if isinstance(error, PermissionError):
        return Failure(False, "permission_denied", str(error))
    return Failure(True, "storage_unavailable", f"{error.__class__.__name__}: {error}")


def default_fetch(cfg: ScoringConfig) -> Fetch:
    """A bounded read: at most ``cfg.max_image_bytes + 1`` bytes of any object are held."""
    return functools.partial(storage.read_bounded, limit=cfg.max_image_bytes)


_pools = threading.local()


def _thread_pool(kind: str, size: int) -> ThreadPoolExecutor:
    """A pool of ``size`` threads kept for the calling thread (a batch in flight): each batch
    uses its own, as it did when every batch started a pool, but the threads start once.
    Starting them per batch took 8% of a worker's CPU (py-spy, benchmarks/worker.py)."""
    pools = _pools.__dict__.setdefault("pools", {})
    pool = pools.get((kind, size))
    if pool is None:
        pool = pools[(kind, size)] = ThreadPoolExecutor(max_workers=size,
                                                        thread_name_prefix=f"clazzify-{kind}")
    return pool


def _fetch_all(
    events: Sequence[UploadEvent], fetch: Fetch, cfg: ScoringConfig
) -> list[bytes | Failure]:
    def one(event: UploadEvent) -> bytes | Failure:
        try:
            if cfg.sources is not None:
                cfg.sources.check(event.uri)
            data = fetch(event.uri)
        except (StorageError, OSError) as e:
            return classify_fetch_error(e)
        except Exception as e:  # urllib3/minio raise many types for a dead endpoint
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
    return list(_thread_pool("fetch", cfg.fetch_threads).map(one, events))


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
    fetch: Fetch | None = None,
    cfg: ScoringConfig = ScoringConfig(),
    stats: BatchStats | None = None,
) -> list[EventResult]:
    """Fetch and score ``events``; one result per event, in order. Writes nothing.

    ``fetch`` defaults to :func:`default_fetch` (a read bounded by ``cfg.max_image_bytes``).
    """
    stats = stats if stats is not None else BatchStats()
    fetch = fetch or default_fetch(cfg)
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
        replies = list(_thread_pool("request", cfg.request_concurrency).map(infer, chunks))
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
            unknown, ood_score = prediction.verdict(row)
            results[i] = EventResult(
                event,
                score=ScoreRow(
                    image_id=event.image_id,
                    model_name=prediction.model_name or cfg.default_model_name,
                    model_version=prediction.model_version,
                    probabilities=probabilities,
                    source_uri=event.uri,
                    unknown=unknown,
                    in_distribution_score=ood_score,
                ),
            )
    stats.infer_s += time.perf_counter() - started
    return [r for r in results if r is not None]


def backoff_delay(attempt: int, initial_s: float, max_s: float) -> float:
    """Delay before retry ``attempt`` (0-based): doubling from ``initial_s``, capped."""
    return min(max_s, initial_s * (2 ** min(attempt, 30)))


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


@dataclass
class MessageResult:
    """One queue message on its way through :func:`process_batch`.

    Attributes:
        message: the message as received.
        events: the upload events it carries (empty when it could not be parsed, or when
            it names nothing to score, e.g. an S3 deletion).
        results: one result per event, in order, once they are scored.
        error: why the message could not be parsed; it is dead without any event.
    """

    message: Message
    events: list[UploadEvent] = field(default_factory=list)
    results: list[EventResult] = field(default_factory=list)
    error: EventError | None = None

    @classmethod
    def parse(cls, message: Message) -> MessageResult:
        try:
            return cls(message, events=parse_message(message.body))
        except EventError as e:
            return cls(message, error=e)

    @property
    def body_text(self) -> str:
        """The body as stored with a dead letter (its first 10 kB)."""
        return self.message.body[:10_000].decode("utf-8", errors="replace")

    @property
    def retry(self) -> Failure | None:
        """The first retryable failure among its events: the message must not be written."""
        return next((r.failure for r in self.results if r.failure and r.failure.retry), None)

    def add_to(self, batch: Batch) -> Batch:
        """Add what committing this message writes (images, scores, dead letters) to ``batch``."""
        if self.error is not None:
            batch.dead_letters.append(DeadLetter(self.error.reason, str(self.error), self.body_text))
            return batch
        return add_results(batch, self.results, self.body_text)

    def outcome(self) -> Outcome:
        """The outcome once its rows (:meth:`add_to`) are committed."""
        if self.error is not None:
            return Outcome("dead", self.error.reason, str(self.error))
        scored = sum(r.score is not None for r in self.results)
        dead = next((r.failure for r in self.results if r.failure is not None), None)
        if dead is not None:
            return Outcome("dead", dead.reason, dead.detail, scored=scored)
        return Outcome("scored" if scored else "skipped", scored=scored)


def process_batch(
    messages: Sequence[Message],
    client: Scorer,
    repo: Repository,
    *,
    fetch: Fetch | None = None,
    cfg: ScoringConfig = ScoringConfig(),
    stats: BatchStats | None = None,
) -> list[Outcome]:
    """Score a batch of queue messages and commit the results in one transaction.

    Args:
        messages: raw queue messages (JSON upload events).
        client: the model server client.
        repo: where scores and dead letters are written.
        fetch: reads an image's bytes from its URI (default: :func:`default_fetch`).
        cfg: request size, download threads, size limit.
        stats: filled with counts and timings when given.

    Returns:
        one :class:`Outcome` per message, in order. A message is ``retry`` when any of
        its events met a retryable failure or the commit failed transiently; nothing of
        it is written then, so a later attempt starts clean.
    """
    stats = stats if stats is not None else BatchStats()
    stats.messages += len(messages)
    parsed = [MessageResult.parse(m) for m in messages]
    events = [e for p in parsed for e in p.events]
    stats.events += len(events)
    results = iter(score_unclaimed(events, client, repo, fetch, cfg, stats))
    for p in parsed:
        p.results = [next(results) for _ in p.events]

    writable = [p for p in parsed if p.retry is None]
    committed = iter(_commit(writable, repo, stats))
    outcomes = [
        next(committed) if p.retry is None else Outcome("retry", p.retry.reason, p.retry.detail)
        for p in parsed
    ]
    _count(stats, parsed, outcomes)
    return outcomes


def score_unclaimed(
    events: Sequence[UploadEvent],
    client: Scorer,
    repo: Repository,
    fetch: Fetch | None = None,
    cfg: ScoringConfig = ScoringConfig(),
    stats: BatchStats | None = None,
) -> list[EventResult]:
    """:func:`score_events`, except that an event naming a known image id with another URI
    fails as ``id_conflict`` (permanent) without being fetched; one result per event."""
    conflicts = _id_conflicts(events, repo)
    scored = iter(
        score_events([e for i, e in enumerate(events) if i not in conflicts], client, fetch,
                     cfg, stats)
    )
    return [
        EventResult(e, failure=conflicts[i]) if i in conflicts else next(scored)
        for i, e in enumerate(events)
    ]


def _id_conflicts(events: Sequence[UploadEvent], repo: Repository) -> dict[int, Failure]:
    """Events whose image id already belongs to another URI (stored, or earlier in the batch).

    An event must never move an existing photo: the uploader may choose the id
    (``x-amz-meta-image-id``), and moderators would see another photo under the old id.
    A database that cannot be read here is left to the commit, which retries.
    """
    if not events:
        return {}
    try:
        known = dict(repo.image_uris(sorted({e.image_id for e in events})))
    except sqlalchemy.exc.SQLAlchemyError as e:
        log.warning("cannot check image ids for conflicts (%s); the commit will retry", e)
        known = {}
    conflicts: dict[int, Failure] = {}
    for i, event in enumerate(events):
        uri = known.setdefault(event.image_id, event.uri)
        if uri != event.uri:
            conflicts[i] = Failure(
                False,
                "id_conflict",
                f"image id {event.image_id!r} already belongs to {uri}; this event names "
                f"{event.uri}: upload it under a new id",
            )
    return conflicts


def _count(stats: BatchStats, parsed: Sequence[MessageResult], outcomes: Sequence[Outcome]) -> None:
    for p, o in zip(parsed, outcomes, strict=True):
        if o.status in ("retry", "dead"):
            setattr(stats, o.status, getattr(stats, o.status) + 1)
            stats.reasons[o.reason] = stats.reasons.get(o.reason, 0) + 1
        if o.scored:
            stats.scored += o.scored
            for r in p.results:
                if r.score is not None:
                    v = r.score.model_version
                    stats.model_versions[v] = stats.model_versions.get(v, 0) + 1
                    stats.committed.append(r.score)


def _save(repo: Repository, batch: Batch, stats: BatchStats) -> sqlalchemy.exc.SQLAlchemyError | None:
    """Commit ``batch``; the database's error, None when it was written."""
    started = time.perf_counter()
    try:
        repo.save(batch)
    except sqlalchemy.exc.SQLAlchemyError as e:
        return e
    finally:
        stats.save_s += time.perf_counter() - started
    return None


def _commit(results: Sequence[MessageResult], repo: Repository, stats: BatchStats) -> list[Outcome]:
    """Write ``results`` in one transaction; the outcome of each, in order."""
    if not results:
        return []
    merged = Batch()
    for r in results:
        r.add_to(merged)
    error = _save(repo, merged, stats)
    if error is None or is_transient(error) or len(results) == 1:
        return [_outcome_after(r, error, repo, stats) for r in results]
    # The database refuses a row (not a transient failure): commit message by message so
    # one bad message cannot hold the others back.
    return [_outcome_after(r, _save(repo, r.add_to(Batch()), stats), repo, stats) for r in results]


def _outcome_after(
    result: MessageResult,
    error: sqlalchemy.exc.SQLAlchemyError | None,
    repo: Repository,
    stats: BatchStats,
) -> Outcome:
    """The outcome of a message whose commit raised ``error`` (None: it was committed).

    A transient error means retry; a refused row makes the message a ``db_rejected``
    dead letter, itself committed (or retried when even that cannot be written).
    """
    if error is None:
        return result.outcome()
    detail = f"{error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if is_transient(error):
        return Outcome("retry", "db_unavailable", detail)
    dead = Batch(dead_letters=[DeadLetter("db_rejected", detail, result.body_text)])
    if (again := _save(repo, dead, stats)) is not None:
        return Outcome("retry", "db_unavailable", f"{again.__class__.__name__}: {again}")
    return Outcome("dead", "db_rejected", detail)
