"""The consume loop's steps (settle finished batches, schedule new ones, decide whether to
stop) on a fake channel; the real broker runs in tests/integration/test_worker_e2e.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from clazzify.scoring.consumer import Consumer, ConsumerConfig, _Session
from clazzify.scoring.worker import BatchStats, Message, Outcome

pytestmark = pytest.mark.unit


class _Channel:
    def __init__(self) -> None:
        self.acked: list[int] = []
        self.dead: list[str] = []
        self.headers: list[dict] = []

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_publish(self, *, routing_key: str, properties=None, **_kw: object) -> None:
        self.dead.append(routing_key)
        self.headers.append(dict(properties.headers) if properties is not None else {})


def _deliver(
    session: _Session, tag: int, body: bytes, headers: dict | None = None,
    redelivered: bool = False,
) -> None:
    props = SimpleNamespace(headers=headers, content_type="application/json")
    session.receive(None, SimpleNamespace(delivery_tag=tag, redelivered=redelivered), props, body)


def _process(messages: Sequence[Message], stats: BatchStats) -> list[Outcome]:
    stats.messages += len(messages)
    return [
        Outcome("dead", "bad_json") if m.body == b"junk" else Outcome("retry", "db_unavailable")
        if m.body == b"later" else Outcome("scored", scored=1)
        for m in messages
    ]


def _settle_all(consumer: Consumer, session: _Session) -> None:
    for future in list(session.running):
        future.result(timeout=5)
    consumer._settle_finished(session)


def test_one_pass_of_the_loop_steps() -> None:
    cfg = ConsumerConfig(batch_size=2, batch_wait_s=30, batches_in_flight=1, idle_exit_s=0.0,
                         backoff_initial_s=60, backoff_max_s=60)
    consumer = Consumer(cfg, _process)
    channel = _Channel()
    session = _Session(SimpleNamespace(add_callback_threadsafe=lambda _cb: None), channel)
    try:
        for tag, body in enumerate([b"ok", b"junk", b"later"], start=1):
            _deliver(session, tag, body)
        consumer._schedule(session)
        assert len(session.running) == 1 and len(session.pending) == 1  # one batch of two
        assert not consumer._done(session)
        _settle_all(consumer, session)
        assert channel.acked == [1, 2] and channel.dead == [cfg.dlq]

        session.pending[0].arrived = time.monotonic()
        consumer._schedule(session)  # the third waits batch_wait_s for company
        assert not session.running
        session.pending[0].arrived -= cfg.batch_wait_s
        consumer._schedule(session)
        _settle_all(consumer, session)
        assert channel.acked == [1, 2]  # "later" failed transiently: kept, not acknowledged
        assert [len(b.deliveries) for b in session.waiting] == [1]
        assert not consumer._done(session)  # a retry is waiting: not idle

        consumer.stop.set()
        assert consumer._done(session)  # stopping, nothing in flight: the broker redelivers
    finally:
        consumer._pool.shutdown(wait=True)


def test_stop_waits_for_the_batch_in_flight() -> None:
    release = threading.Event()

    def slow(messages: Sequence[Message], stats: BatchStats) -> list[Outcome]:
        release.wait(5)
        return [Outcome("scored", scored=1) for _ in messages]

    consumer = Consumer(ConsumerConfig(batch_size=1), slow)
    channel = _Channel()
    session = _Session(SimpleNamespace(add_callback_threadsafe=lambda _cb: None), channel)
    try:
        _deliver(session, 7, b"ok")
        consumer._schedule(session)
        consumer.stop.set()
        assert not consumer._done(session)
        release.set()
        _settle_all(consumer, session)
        assert channel.acked == [7] and consumer._done(session)
    finally:
        consumer._pool.shutdown(wait=True)


def test_a_message_delivered_too_often_is_dead_before_any_work() -> None:
    cfg = ConsumerConfig(max_deliveries=3)
    consumer = Consumer(cfg, _process)
    channel = _Channel()
    session = _Session(SimpleNamespace(add_callback_threadsafe=lambda _cb: None), channel)
    try:
        _deliver(session, 1, b"ok", {"x-delivery-count": 3}, redelivered=True)  # quorum queue
        _deliver(session, 2, b"ok", {"x-death": [{"count": 2}, {"count": 1}]})
        _deliver(session, 3, b"ok", {"x-clazzify-deliveries": 2}, redelivered=True)
        _deliver(session, 4, b"ok", {"x-delivery-count": 1}, redelivered=True)
        _deliver(session, 5, b"ok", redelivered=True)  # classic queue: counted in a copy
        _deliver(session, 6, b"ok")
        consumer._screen(session)
        assert channel.acked == [1, 2, 3, 5]
        assert channel.dead == [cfg.dlq, cfg.dlq, cfg.dlq, cfg.queue]
        assert [h.get("x-clazzify-reason") for h in channel.headers[:3]] == ["delivery_limit"] * 3
        assert channel.headers[3]["x-clazzify-deliveries"] == 1
        assert [d.tag for d in session.pending] == [4, 6]
    finally:
        consumer._pool.shutdown(wait=True)


def test_a_message_whose_object_keeps_failing_is_dead_after_max_attempts() -> None:
    def flaky(messages: Sequence[Message], stats: BatchStats) -> list[Outcome]:
        return [Outcome("retry", "storage_unavailable", "503") if m.body == b"obj" else
                Outcome("retry", "endpoint_unavailable", "down") for m in messages]

    cfg = ConsumerConfig(batch_size=2, batch_wait_s=0, max_attempts=3, backoff_initial_s=0.001,
                         backoff_max_s=0.001)
    consumer = Consumer(cfg, flaky)
    channel = _Channel()
    session = _Session(SimpleNamespace(add_callback_threadsafe=lambda _cb: None), channel)
    try:
        _deliver(session, 1, b"obj")
        _deliver(session, 2, b"outage")
        for _ in range(3):
            time.sleep(0.01)
            consumer._schedule(session)
            _settle_all(consumer, session)
        assert channel.acked == [1] and channel.dead == [cfg.dlq]
        assert channel.headers[0]["x-clazzify-reason"] == "retries_exhausted"
        # An outage of the model server is not the message's fault: it waits, never dropped.
        assert [d.tag for b in session.waiting for d in b.deliveries] == [2]
    finally:
        consumer._pool.shutdown(wait=True)
