"""The AMQP edge of the scoring worker: consume, batch, acknowledge, dead-letter, retry.

Built on pika's ``BlockingConnection``: the work of a batch (HTTP to the model server,
a database transaction) is blocking, so an event loop (aio-pika) would buy nothing but
an async rewrite of the HTTP and database layers. Batches run in helper threads (two at
a time by default, so the server scores one while the worker reads, commits and
acknowledges the other) while the main thread alone touches the connection, as pika
requires, and keeps servicing it (heartbeats, deliveries) however long a batch or a
backoff takes.

Delivery guarantees:

- at most ``prefetch`` unacknowledged messages are held (``basic.qos``);
- a message is acknowledged only after :func:`~clazzify.scoring.worker.process_batch`
  committed its scores (or its dead letter) to the database;
- a dead message is published to the dead-letter queue with ``x-clazzify-reason`` /
  ``x-clazzify-detail`` headers, confirmed by the broker, then acknowledged;
- a message that met a transient failure is kept and retried with exponential backoff;
  if the worker dies meanwhile the broker hands it to another worker (scores are upserts,
  so a redelivery never doubles a row). A failure of the message's own object (its store
  timing out, answering 5xx) is retried ``max_attempts`` times, then dead-lettered as
  ``retries_exhausted``; an outage of the model server or the database is not the
  message's fault and is retried until it ends (the prefetch window bounds what waits);
- no message cycles forever: one the broker delivered ``max_deliveries`` times (the
  quorum queue's ``x-delivery-count``, an ``x-death`` count, or this worker's own
  ``x-clazzify-deliveries`` counter) is dead-lettered as ``delivery_limit`` before any
  work. On a classic queue the broker counts nothing, so a redelivered message (a worker
  died holding it, e.g. OOM-killed) is republished with the counter raised and the
  original acknowledged;
- SIGTERM (``stop`` set) lets the batches in flight finish and be acknowledged, hands
  the prefetched rest (and batches waiting for a retry) back to the broker, and returns.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from clazzify.core.errors import ClazzifyError, ConfigError
from clazzify.scoring.events import UploadEvent
from clazzify.scoring.worker import (
    BatchStats,
    Message,
    Outcome,
    ScoringConfig,
    backoff_delay,
    process_batch,
)

if TYPE_CHECKING:  # imported where used: httpx, SQLAlchemy and prometheus_client load late
    from clazzify.scoring.endpoint_client import EndpointConfig
    from clazzify.scoring.metrics import WorkerMetrics
    from clazzify.scoring.scores import ScoreRepository

log = logging.getLogger(__name__)

REASON_HEADER = "x-clazzify-reason"
_FATAL_AT_START = ("does not exist", "password authentication failed")
DETAIL_HEADER = "x-clazzify-detail"
#: This worker's count of earlier deliveries of a message (classic queues count nothing).
DELIVERIES_HEADER = "x-clazzify-deliveries"
#: Retry reasons that are the message's own (its object); the others are outages.
_PER_MESSAGE_REASONS = frozenset({"storage_unavailable", "internal_error"})

ProcessFn = Callable[[Sequence[Message], BatchStats], list[Outcome]]


class BrokerError(ClazzifyError):
    """The broker cannot be used: unreachable (for a one-shot command) or refusing the login."""


def _shown(amqp_url: str) -> str:
    """``amqp_url`` with its password hidden."""
    from urllib.parse import urlsplit

    parts = urlsplit(amqp_url)
    if parts.password is None:
        return amqp_url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _refused_login(error: BaseException, amqp_url: str) -> BrokerError | None:
    """A :class:`BrokerError` when ``error`` is a refused login or vhost (permanent), else None.

    pika reports a refused login as ``ProbableAuthenticationError`` (or, for a vhost the user
    may not use, ``ProbableAccessDeniedError``), sometimes wrapped in
    ``AMQPConnectionError``'s arguments.
    """
    import pika.exceptions

    refused = (pika.exceptions.ProbableAuthenticationError,
               pika.exceptions.ProbableAccessDeniedError)
    causes = [error, *(a for a in getattr(error, "args", ()) if isinstance(a, BaseException))]
    for cause in causes:
        if isinstance(cause, refused) or "ACCESS_REFUSED" in str(cause):
            kind = ("virtual host" if isinstance(cause, pika.exceptions.ProbableAccessDeniedError)
                    else "login")
            return BrokerError(
                f"the broker at {_shown(amqp_url)} refused the {kind} "
                f"({cause.__class__.__name__}): check the user, password and vhost in "
                "--amqp-url / CLAZZIFY_AMQP_URL"
            )
    return None


@dataclass(frozen=True)
class ConsumerConfig:
    """Where to consume from and how.

    Attributes:
        amqp_url: broker URL, e.g. ``amqp://guest:guest@127.0.0.1:5672/%2F``.
        queue: the durable queue of upload events.
        dead_letter_queue: where dead messages go; default ``<queue>.dead``.
        exchange: when set, a durable topic exchange bound to ``queue`` with
            ``routing_key`` (what a MinIO AMQP notification target publishes to).
        routing_key: binding key for ``exchange``.
        batch_size: most messages scored together.
        batch_wait_s: how long to wait for a batch to fill once a message is in.
        batches_in_flight: batches processed at once (one is scored while another is
            read, committed and acknowledged).
        prefetch: unacknowledged messages held at most; default ``batch_size`` times
            ``batches_in_flight + 1``, so the next batch is already here when one finishes.
        backoff_initial_s / backoff_max_s: retry delays of transient failures (doubling).
        heartbeat_s: AMQP heartbeat.
        idle_exit_s: return after this long without any message (None: run forever).
        max_deliveries: a message delivered this many times is dead-lettered
            (``delivery_limit``) before any work.
        max_attempts: tries of a message whose own object fails transiently before it is
            dead-lettered (``retries_exhausted``).
        queue_type: ``classic`` or ``quorum`` (the broker then counts deliveries itself;
            an existing queue keeps the type it was declared with).
    """

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    queue: str = "clazzify.uploads"
    dead_letter_queue: str = ""
    exchange: str = ""
    routing_key: str = "#"
    batch_size: int = 32
    batch_wait_s: float = 0.2
    batches_in_flight: int = 2
    prefetch: int = 0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    heartbeat_s: int = 30
    idle_exit_s: float | None = None
    max_deliveries: int = 5
    max_attempts: int = 6
    queue_type: str = "classic"

    def __post_init__(self) -> None:
        if self.max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be >= 1, got {self.max_deliveries}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.queue_type not in ("classic", "quorum"):
            raise ConfigError(f"queue_type must be classic or quorum, got {self.queue_type!r}")
        if not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ConfigError(f"AMQP URL {self.amqp_url!r} must start with amqp:// or amqps://")
        if not self.queue:
            raise ConfigError("queue name must not be empty")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.batches_in_flight < 1:
            raise ConfigError(f"batches_in_flight must be >= 1, got {self.batches_in_flight}")
        if self.prefetch and self.prefetch < self.batch_size:
            raise ConfigError(
                f"prefetch={self.prefetch} is below batch_size={self.batch_size}: batches "
                "could never fill; raise prefetch or leave it 0 (automatic)"
            )
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ConfigError(
                f"need 0 < backoff_initial_s ({self.backoff_initial_s}) <= "
                f"backoff_max_s ({self.backoff_max_s})"
            )
        if self.batch_wait_s < 0:
            raise ConfigError(f"batch_wait_s must be >= 0, got {self.batch_wait_s}")

    @property
    def dlq(self) -> str:
        return self.dead_letter_queue or f"{self.queue}.dead"

    @property
    def prefetch_count(self) -> int:
        return self.prefetch or (self.batches_in_flight + 1) * self.batch_size


def declare_topology(channel, cfg: ConsumerConfig) -> None:  # channel: a pika channel
    """Declare the durable queue, its dead-letter queue and the optional exchange binding."""
    arguments = {"x-queue-type": "quorum"} if cfg.queue_type == "quorum" else None
    channel.queue_declare(queue=cfg.queue, durable=True, arguments=arguments)
    channel.queue_declare(queue=cfg.dlq, durable=True)
    if cfg.exchange:
        channel.exchange_declare(exchange=cfg.exchange, exchange_type="topic", durable=True)
        channel.queue_bind(queue=cfg.queue, exchange=cfg.exchange, routing_key=cfg.routing_key)


class _Delivery:
    __slots__ = ("arrived", "body", "headers", "properties", "redelivered", "tag")

    def __init__(self, method, properties, body: bytes) -> None:
        self.tag = method.delivery_tag
        self.redelivered = bool(getattr(method, "redelivered", False))
        self.properties = properties
        self.headers = dict(properties.headers or {})
        self.body = body
        self.arrived = time.monotonic()

    @property
    def broker_count(self) -> int | None:
        """Earlier deliveries as the broker counted them (quorum queue, x-death), or None."""
        counts = []
        if isinstance(self.headers.get("x-delivery-count"), int):
            counts.append(self.headers["x-delivery-count"])
        deaths = self.headers.get("x-death")
        if isinstance(deaths, list):
            counts.append(sum(int(d.get("count", 0)) for d in deaths if isinstance(d, dict)))
        return max(counts) if counts else None

    @property
    def deliveries(self) -> int:
        """Earlier deliveries of this message, by every count available."""
        own = self.headers.get(DELIVERIES_HEADER)
        own = own if isinstance(own, int) else 0
        return max(own, self.broker_count or 0)


@dataclass
class _Batch:
    deliveries: list[_Delivery]
    attempt: int = 0
    due: float = 0.0  # monotonic time of the next try, for a batch waiting to be retried


@dataclass(frozen=True)
class _Running:
    """A batch handed to a helper thread."""

    batch: _Batch
    stats: BatchStats
    started: float  # perf_counter at submission


@dataclass
class _Session:
    """Everything the consume loop holds on one connection; a reconnect starts a new one
    (the broker requeues what the old connection held unacknowledged)."""

    connection: Any
    channel: Any
    pending: list[_Delivery] = field(default_factory=list)  # received, not in a batch yet
    running: dict[Future, _Running] = field(default_factory=dict)
    waiting: list[_Batch] = field(default_factory=list)  # failed transiently; retried when due
    last_activity: float = field(default_factory=time.monotonic)

    def receive(self, _ch, method, props, body: bytes) -> None:  # pika's on_message_callback
        self.pending.append(_Delivery(method, props, body))
        self.last_activity = time.monotonic()


class Consumer:
    """Runs the consume loop on one connection; see the module docstring.

    Up to ``cfg.batches_in_flight`` batches are processed at once in helper threads, so
    the model server works on one batch while the worker reads, commits and
    acknowledges another. Only the main thread touches the connection.

    Args:
        cfg: broker and batching settings.
        process: scores a batch (``process_batch`` with its dependencies bound); must be
            safe to call from several threads at once.
        stop: set it (from a signal handler) to finish the batches in flight and return.
        on_batch: called with each batch's stats and outcomes (metrics, logs).
    """

    def __init__(
        self,
        cfg: ConsumerConfig,
        process: ProcessFn,
        stop: threading.Event | None = None,
        on_batch: Callable[[BatchStats, list[Outcome], float], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.process = process
        self.stop = stop or threading.Event()
        self.on_batch = on_batch
        self._pool = ThreadPoolExecutor(
            max_workers=cfg.batches_in_flight, thread_name_prefix="clazzify-batch"
        )

    # -- connection --------------------------------------------------------------------------

    def _connect(self):  # -> pika.BlockingConnection
        import pika

        params = pika.URLParameters(self.cfg.amqp_url)
        params.heartbeat = self.cfg.heartbeat_s
        params.blocked_connection_timeout = 300
        params.connection_attempts = 1
        return pika.BlockingConnection(params)

    def run(self) -> None:
        """Consume until ``stop`` is set (or the queue stayed idle ``idle_exit_s``).

        Reconnects with backoff when the broker goes away; messages it held unacknowledged
        are redelivered by the broker, and their rewrite is an idempotent upsert.
        """
        import pika.exceptions

        attempt = 0
        try:
            while not self.stop.is_set():
                try:
                    connection = self._connect()
                except pika.exceptions.AMQPConnectionError as e:
                    if (refused := _refused_login(e, self.cfg.amqp_url)) is not None:
                        raise refused from e  # a wrong password does not heal with time
                    delay = backoff_delay(
                        attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s
                    )
                    log.warning(
                        "cannot reach the broker (%s); retrying in %.1fs",
                        e.__class__.__name__,
                        delay,
                        extra={"retry_in_s": delay},
                    )
                    attempt += 1
                    self.stop.wait(delay)
                    continue
                attempt = 0
                try:
                    if self._consume(connection):
                        return
                except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as e:
                    # The broker requeues what this connection held; the next session starts empty.
                    log.warning(
                        "lost the broker connection (%s: %s); reconnecting", e.__class__.__name__, e
                    )
                finally:
                    if connection.is_open:
                        with contextlib.suppress(pika.exceptions.AMQPError):
                            connection.close()
        finally:
            self._pool.shutdown(wait=True)

    # -- the loop ---------------------------------------------------------------------------

    def _consume(self, connection) -> bool:
        """Consume on ``connection``; True when done (stop or idle), False to reconnect."""
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, self.cfg)
        channel.basic_qos(prefetch_count=self.cfg.prefetch_count)
        session = _Session(connection, channel)
        consumer_tag = channel.basic_consume(self.cfg.queue, on_message_callback=session.receive)
        log.info(
            "consuming %s (dead letters to %s), batch %d, %d batches in flight, prefetch %d",
            self.cfg.queue,
            self.cfg.dlq,
            self.cfg.batch_size,
            self.cfg.batches_in_flight,
            self.cfg.prefetch_count,
        )
        while True:
            self._settle_finished(session)
            self._screen(session)
            if not self.stop.is_set():
                self._schedule(session)
            if self._done(session):
                break
            connection.process_data_events(time_limit=self._wait_s(session))
        channel.basic_cancel(consumer_tag)
        for delivery in session.pending:  # prefetched, never started: hand back now
            channel.basic_nack(delivery.tag, requeue=True)
        channel.close()
        return True

    def _settle_finished(self, session: _Session) -> None:
        """Acknowledge and dead-letter the batches that finished; queue their retries."""
        for future in [f for f in session.running if f.done()]:
            running = session.running.pop(future)
            seconds = time.perf_counter() - running.started
            retry = self._finish(session.channel, running.batch, future, running.stats, seconds)
            if retry is not None:
                session.waiting.append(retry)
            session.last_activity = time.monotonic()

    def _screen(self, session: _Session) -> None:
        """Dead-letter what was delivered too often; count a classic queue's redeliveries.

        Runs before any work, so a message that kills the worker (and is redelivered each
        time) stops after ``max_deliveries`` tries instead of taking the pool down.
        """
        import pika

        kept: list[_Delivery] = []
        for delivery in session.pending:
            seen = delivery.deliveries + (1 if delivery.redelivered and delivery.broker_count
                                          is None else 0)
            if seen >= self.cfg.max_deliveries:
                self._dead_letter(session.channel, delivery, Outcome(
                    "dead", "delivery_limit",
                    f"delivered {seen} times before; the limit is {self.cfg.max_deliveries}"))
                session.channel.basic_ack(delivery.tag)
                continue
            if delivery.redelivered and delivery.broker_count is None:
                # A classic queue keeps no count: carry it in a header of a fresh copy.
                headers = {**delivery.headers, DELIVERIES_HEADER: seen}
                session.channel.basic_publish(
                    exchange="",
                    routing_key=self.cfg.queue,
                    body=delivery.body,
                    properties=pika.BasicProperties(
                        delivery_mode=2, headers=headers,
                        content_type=delivery.properties.content_type),
                    mandatory=True,
                )
                session.channel.basic_ack(delivery.tag)
                log.warning("message redelivered (%d earlier deliveries): requeued with a "
                            "count", seen, extra={"deliveries": seen})
                continue
            kept.append(delivery)
        session.pending[:] = kept

    def _schedule(self, session: _Session) -> None:
        """Hand batches to the helper threads while fewer than ``batches_in_flight`` run."""
        while len(session.running) < self.cfg.batches_in_flight:
            batch = self._next_batch(session)
            if batch is None:
                return
            stats = BatchStats()
            messages = [Message(d.body, d.tag) for d in batch.deliveries]
            future = self._pool.submit(self.process, messages, stats)
            # Wake process_data_events as soon as the batch is done.
            future.add_done_callback(
                lambda _f: session.connection.add_callback_threadsafe(lambda: None)
            )
            session.running[future] = _Running(batch, stats, time.perf_counter())

    def _done(self, session: _Session) -> bool:
        """Whether to leave the loop: stopping with nothing in flight, or idle long enough."""
        if self.stop.is_set():
            if session.running:
                return False  # let the batches in flight finish and be acknowledged
            if session.waiting:
                log.warning(
                    "stopping with %d messages still failing transiently; the broker "
                    "will redeliver them",
                    sum(len(b.deliveries) for b in session.waiting),
                )
            return True
        idle = time.monotonic() - session.last_activity
        if (
            self.cfg.idle_exit_s is not None
            and not (session.running or session.waiting or session.pending)
            and idle >= self.cfg.idle_exit_s
        ):
            log.info("queue %s idle for %.1fs; exiting", self.cfg.queue, idle)
            return True
        return False

    def _next_batch(self, session: _Session) -> _Batch | None:
        """A retry that is due, else a full batch, else a partial one that waited long enough."""
        now = time.monotonic()
        for i, batch in enumerate(session.waiting):
            if batch.due <= now:
                return session.waiting.pop(i)
        pending = session.pending
        if not pending:
            return None
        full = len(pending) >= self.cfg.batch_size
        if not full and now - pending[0].arrived < self.cfg.batch_wait_s:
            return None
        taken = pending[: self.cfg.batch_size]
        del pending[: self.cfg.batch_size]
        return _Batch(taken)

    def _wait_s(self, session: _Session) -> float:
        """How long to wait for broker events before looking at the batches again."""
        now = time.monotonic()
        deadlines = [b.due for b in session.waiting]
        if session.pending:
            deadlines.append(session.pending[0].arrived + self.cfg.batch_wait_s)
        wait = min([0.25, *(d - now for d in deadlines)])
        return max(wait, 0.001)

    def _finish(
        self,
        channel,
        batch: _Batch,
        future: Future,
        stats: BatchStats,
        seconds: float,
    ) -> _Batch | None:
        """Settle a processed batch; the part to retry later, if any."""
        try:
            outcomes = future.result()
        except Exception as e:  # a bug must not ack, drop or crash-loop
            log.error("batch failed unexpectedly; keeping its messages for a retry", exc_info=e)
            outcomes = [Outcome("retry", "internal_error", repr(e)) for _ in batch.deliveries]
        attempt = batch.attempt + 1
        outcomes = [
            Outcome("dead", "retries_exhausted",
                    f"{o.reason} after {attempt} attempts: {o.detail}"[:2000])
            if o.status == "retry" and o.reason in _PER_MESSAGE_REASONS
            and attempt >= self.cfg.max_attempts else o
            for o in outcomes
        ]
        if self.on_batch is not None:
            self.on_batch(stats, outcomes, seconds)
        retry = self._settle(channel, batch.deliveries, outcomes)
        if not retry:
            return None
        delay = backoff_delay(batch.attempt, self.cfg.backoff_initial_s, self.cfg.backoff_max_s)
        first = next(o for o in outcomes if o.status == "retry")
        log.warning(
            "%d messages failed transiently (%s: %s); retry %d in %.1fs",
            len(retry),
            first.reason,
            first.detail[:200],
            batch.attempt + 1,
            delay,
            extra={
                "retry_reason": first.reason,
                "retry_in_s": delay,
                "messages": len(retry),
            },
        )
        return _Batch(retry, batch.attempt + 1, time.monotonic() + delay)

    def _settle(self, channel, todo: list[_Delivery], outcomes: list[Outcome]) -> list[_Delivery]:
        """Dead-letter and acknowledge what is done; return the deliveries to retry."""
        retry: list[_Delivery] = []
        for delivery, outcome in zip(todo, outcomes, strict=True):
            if outcome.status == "retry":
                retry.append(delivery)
                continue
            if outcome.status == "dead":
                self._dead_letter(channel, delivery, outcome)
            # Batches finish out of order, so each message is acknowledged on its own.
            channel.basic_ack(delivery.tag)
        return retry

    def _dead_letter(self, channel, delivery: _Delivery, outcome: Outcome) -> None:
        """Publish ``delivery`` to the dead-letter queue with the reason (confirmed)."""
        import pika

        headers = dict(delivery.headers)
        headers.update(
            {
                REASON_HEADER: outcome.reason,
                DETAIL_HEADER: outcome.detail[:2000],
                "x-clazzify-queue": self.cfg.queue,
            }
        )
        channel.basic_publish(
            exchange="",
            routing_key=self.cfg.dlq,
            body=delivery.body,
            properties=pika.BasicProperties(
                delivery_mode=2,
                headers=headers,
                content_type=delivery.properties.content_type,
            ),
            mandatory=True,
        )


def open_repository(
    db_url: str, stop: threading.Event, backoff_max_s: float = 30.0
) -> ScoreRepository | None:
    """Open (and migrate) the score database, waiting with backoff while it is unreachable.

    Returns:
        the :class:`~clazzify.scoring.scores.ScoreRepository`, or None when ``stop`` was set first.
    """
    import sqlalchemy.exc

    from clazzify.scoring.database import is_transient
    from clazzify.scoring.scores import ScoreRepository

    attempt = 0
    while not stop.is_set():
        try:
            return ScoreRepository.open(db_url)
        except sqlalchemy.exc.SQLAlchemyError as e:
            first_line = str(e).splitlines()[0]
            # psycopg reports no SQLSTATE for failed connections; these two messages
            # mean a wrong --db, which waiting will not fix, so fail at start-up.
            if any(m in first_line for m in _FATAL_AT_START):
                from clazzify.scoring.database import missing_database_hint

                raise ConfigError(missing_database_hint(db_url, e)) from e
            if not is_transient(e):
                raise
            delay = backoff_delay(attempt, 0.5, backoff_max_s)
            attempt += 1
            log.warning(
                "database unreachable (%s); retrying in %.1fs",
                str(e).splitlines()[0],
                delay,
                extra={"retry_in_s": delay},
            )
            stop.wait(delay)
    return None


def run_worker(
    consumer_cfg: ConsumerConfig,
    endpoint_cfg: EndpointConfig,
    db_url: str,
    scoring_cfg: ScoringConfig | None = None,
    *,
    stop: threading.Event | None = None,
    metrics: WorkerMetrics | None = None,
) -> None:
    """Wire the endpoint client, the score repository and metrics into a consume loop.

    Returns when ``stop`` is set (after the batches in flight) or the queue stayed idle
    for ``consumer_cfg.idle_exit_s``.
    """
    from clazzify.scoring.endpoint_client import EndpointClient

    stop = stop or threading.Event()
    scoring_cfg = scoring_cfg or ScoringConfig(default_model_name=endpoint_cfg.model_name)
    repo = open_repository(db_url, stop, consumer_cfg.backoff_max_s)
    if repo is None:
        return
    client = EndpointClient(endpoint_cfg)

    def process(messages: Sequence[Message], stats: BatchStats) -> list[Outcome]:
        return process_batch(messages, client, repo, cfg=scoring_cfg, stats=stats)

    def on_batch(stats: BatchStats, outcomes: list[Outcome], seconds: float) -> None:
        if metrics is not None:
            metrics.observe(stats, outcomes, seconds)
        log.info(
            "batch: %d messages, %d scored, %d dead, %d retry in %.3fs",
            stats.messages,
            stats.scored,
            stats.dead,
            stats.retry,
            seconds,
            extra={
                "messages": stats.messages,
                "scored": stats.scored,
                "dead": stats.dead,
                "retry": stats.retry,
                "seconds": round(seconds, 4),
                "fetch_s": round(stats.fetch_s, 4),
                "infer_s": round(stats.infer_s, 4),
                "save_s": round(stats.save_s, 4),
                "reasons": stats.reasons,
                "model_versions": stats.model_versions,
            },
        )

    log.info(
        "worker: endpoint %s model %s, database %s",
        endpoint_cfg.url,
        endpoint_cfg.model_name,
        repo.url,
    )
    try:
        Consumer(consumer_cfg, process, stop, on_batch).run()
    finally:
        client.close()
        repo.close()


def publish_events(cfg: ConsumerConfig, events: Iterable[UploadEvent]) -> int:
    """Publish plain upload messages for ``events`` to ``cfg.queue`` (persistent, confirmed).

    Returns:
        the number of messages published.
    """
    import json

    import pika
    import pika.exceptions

    try:
        connection = pika.BlockingConnection(pika.URLParameters(cfg.amqp_url))
    except pika.exceptions.AMQPConnectionError as e:
        if (refused := _refused_login(e, cfg.amqp_url)) is not None:
            raise refused from e
        raise BrokerError(
            f"cannot reach the broker at {_shown(cfg.amqp_url)} ({e.__class__.__name__}): "
            "start RabbitMQ or fix --amqp-url / CLAZZIFY_AMQP_URL"
        ) from e
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        declare_topology(channel, cfg)
        n = 0
        for event in events:
            body = json.dumps({k: v for k, v in asdict(event).items() if v is not None})
            channel.basic_publish(
                exchange="",
                routing_key=cfg.queue,
                body=body.encode(),
                properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                mandatory=True,
            )
            n += 1
        return n
    finally:
        connection.close()
