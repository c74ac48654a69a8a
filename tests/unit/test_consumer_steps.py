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

    def basic_ack(self, tag: int) -> None:
        self.acked.append(tag)

    def basic_publish(self, *, routing_key: str, **_kw: object) -> None:
        self.dead.append(routing_key)


def _deliver(session: _Session, tag: int, body: bytes) -> None:
    props = SimpleNamespace(headers=None, content_type="application/json")
    session.receive(None, SimpleNamespace(delivery_tag=tag), props, body)


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
