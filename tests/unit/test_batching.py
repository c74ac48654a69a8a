"""Adaptive batching, driven by a real (numpy) engine function and a real event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from clazzify.serving.batching import Batcher

pytestmark = pytest.mark.unit


class Engine:
    """Answers each image with (its first pixel * factor); records every call's size."""

    def __init__(self, factor: float = 1.0, delay: float = 0.0) -> None:
        self.factor = factor
        self.delay = delay
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, key, images: np.ndarray) -> np.ndarray:
        self.calls.append(len(images))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        return images[:, 0, 0, :1].astype(np.float32) * key.factor


def _images(first: int, n: int = 1) -> np.ndarray:
    out = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = np.arange(first, first + n)
    return out


def test_each_request_gets_its_own_rows_back_from_a_shared_batch():
    engine = Engine(delay=0.05)
    batcher = Batcher(engine, max_batch_size=64, max_latency_s=0.5)

    async def main():
        async def one(i):
            with batcher.expecting():
                await asyncio.sleep(0)  # "decoding"
            return await batcher.submit(engine, _images(10 * i, 3))

        return await asyncio.gather(*(one(i) for i in range(8)))

    results = asyncio.run(main())
    for i, out in enumerate(results):
        np.testing.assert_array_equal(out[:, 0], [10 * i, 10 * i + 1, 10 * i + 2])
    assert sum(engine.calls) == 24
    assert len(engine.calls) < 8, f"no batching happened: {engine.calls}"
    assert engine.threads == {"clazzify-engine_0"}
    batcher.close()


def test_batches_never_exceed_max_batch_size():
    engine = Engine()
    seen: list[int] = []
    batcher = Batcher(engine, max_batch_size=4, max_latency_s=0.2, on_batch=seen.append)

    async def main():
        return await asyncio.gather(*(batcher.submit(engine, _images(i * 3, 3)) for i in range(10)))

    results = asyncio.run(main())
    assert max(engine.calls) <= 4 and sum(engine.calls) == 30
    assert seen == engine.calls
    assert np.concatenate(results)[:, 0].tolist() == list(range(30))
    batcher.close()


def test_a_request_larger_than_the_batch_is_split():
    engine = Engine()
    batcher = Batcher(engine, max_batch_size=8, max_latency_s=0.0)
    out = asyncio.run(batcher.submit(engine, _images(0, 20)))
    assert engine.calls == [8, 8, 4]
    assert out[:, 0].tolist() == list(range(20))
    batcher.close()


def test_a_lone_request_does_not_wait_for_the_latency_window():
    engine = Engine()
    batcher = Batcher(engine, max_batch_size=32, max_latency_s=5.0)

    async def main():
        await batcher.submit(engine, _images(0))  # start the worker
        start = time.perf_counter()
        await batcher.submit(engine, _images(1))
        return time.perf_counter() - start

    assert asyncio.run(main()) < 1.0
    batcher.close()


def test_a_batch_waits_for_requests_still_being_decoded():
    engine = Engine()
    batcher = Batcher(engine, max_batch_size=32, max_latency_s=2.0)

    async def late():
        with batcher.expecting():
            await asyncio.sleep(0.1)
        return await batcher.submit(engine, _images(5))

    async def main():
        await batcher.submit(engine, _images(0))  # warm the worker up: one call
        return await asyncio.gather(batcher.submit(engine, _images(1)), late())

    asyncio.run(main())
    assert engine.calls == [1, 2]
    batcher.close()


def test_two_models_in_one_batch_each_run_on_their_own_engine():
    old, new = Engine(factor=1.0), Engine(factor=-1.0)
    batcher = Batcher(lambda key, imgs: key(key, imgs), max_batch_size=32, max_latency_s=0.1)

    async def main():
        return await asyncio.gather(
            batcher.submit(old, _images(3)), batcher.submit(new, _images(4)),
            batcher.submit(new, _images(5)),
        )

    a, b, c = asyncio.run(main())
    assert (a[0, 0], b[0, 0], c[0, 0]) == (3, -4, -5)
    assert old.calls == [1] and new.calls == [2]
    batcher.close()


def test_an_engine_fault_reaches_every_waiter_and_the_batcher_survives():
    calls = []

    def flaky(key, images):
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("engine exploded")
        return images[:, 0, 0, :1].astype(np.float32)

    batcher = Batcher(flaky, max_batch_size=32, max_latency_s=0.05)

    async def main():
        first = await asyncio.gather(
            batcher.submit("m", _images(0)), batcher.submit("m", _images(1)),
            return_exceptions=True,
        )
        second = await batcher.submit("m", _images(7))
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in first)
    assert second[0, 0] == 7
    batcher.close()


def test_the_engine_thread_gathers_the_next_batch_while_the_event_loop_is_busy():
    """The engine thread takes queued requests itself: a loop stuck in other work for 0.3 s
    does not hold back the batches behind it."""
    engine = Engine(delay=0.05)
    batcher = Batcher(engine, max_batch_size=1, max_latency_s=0.0)

    async def main():
        tasks = [asyncio.ensure_future(batcher.submit(engine, _images(i))) for i in range(4)]
        await asyncio.sleep(0)  # every request queued
        time.sleep(0.3)  # the loop busy elsewhere (a slow callback): no await for 0.3 s
        calls_meanwhile = len(engine.calls)
        await asyncio.gather(*tasks)
        return calls_meanwhile

    assert asyncio.run(main()) >= 3, engine.calls
    batcher.close()


def test_a_closed_batcher_refuses_new_work_and_answers_what_was_queued():
    engine = Engine(delay=0.1)
    batcher = Batcher(engine, max_batch_size=1, max_latency_s=0.0)

    async def main():
        queued = [asyncio.ensure_future(batcher.submit(engine, _images(i))) for i in range(2)]
        await asyncio.sleep(0)
        batcher.close()
        with pytest.raises(RuntimeError, match="unloaded"):
            await batcher.submit(engine, _images(9))
        return await asyncio.wait_for(asyncio.gather(*queued, return_exceptions=True), 5)

    results = asyncio.run(main())
    assert [r[0, 0] for r in results] == [0, 1]
