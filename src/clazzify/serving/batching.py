"""Adaptive batching: concurrent requests share one engine call.

A request that reaches the queue starts a batch. The batch then takes whatever else is
queued and, while other requests are still being decoded (so more will arrive soon),
waits for them up to ``max_latency_s`` or until ``max_batch_size`` images are gathered.
With nothing else in flight it runs at once, so a lone request pays no batching delay;
under load, requests pile up while the engine runs and the next batch is full at once.

The engine runs in dedicated threads (ONNX Runtime, OpenVINO and TensorFlow release the
GIL): one for an engine that parallelises inside a call, one per stream for OpenVINO with
several. Each gathers its batches from a thread-safe queue itself and hands each request
its rows through its event loop. The event loop never
stands between two batches: when the engine thread waited on the loop to be handed the
next batch, a busy loop left the engine idle a quarter of the time under load (profiled:
benchmarks/README.md, "int8 and the request path").
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

#: ``run(key, images) -> outputs``: one engine call on one batch of one key (model).
RunFn = Callable[[Hashable, np.ndarray], np.ndarray]


@dataclass
class _Item:
    key: Hashable
    images: np.ndarray
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


_STOP = object()


def _split_runs(items: list[_Item]) -> Iterator[list[_Item]]:
    """Consecutive items with the same key (a hot swap can put two models in one batch)."""
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i].key is not items[start].key:
            yield items[start:i]
            start = i


def _resolve(future: asyncio.Future, result: np.ndarray | None, error: BaseException | None) -> None:
    """Runs on the request's event loop: a cancelled request's future is left alone."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Gathers submitted image arrays into batches of at most ``max_batch_size`` images.

    Args:
        run: the engine call, made from the engine threads.
        max_batch_size: most images per engine call (larger requests are split).
        max_latency_s: longest the first request of a batch waits for others.
        on_batch: called with the size of every engine call (metrics).
        workers: engine threads, each making one call at a time (the engine's
            ``concurrency``).
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        max_latency_s: float,
        on_batch: Callable[[int], None] | None = None,
        workers: int = 1,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._on_batch = on_batch
        self._incoming = 0  # written by event loops, read by the engine thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._threads = [threading.Thread(target=self._engine_loop, name=f"clazzify-engine_{i}",
                                          daemon=True) for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    @contextmanager
    def expecting(self) -> Iterator[None]:
        """Mark a request as on its way (being decoded), so batches wait for it."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    async def submit(self, key: Hashable, images: np.ndarray) -> np.ndarray:
        """Run ``images`` through the engine of ``key`` as part of a batch; returns its rows."""
        if self._closed:
            raise RuntimeError("the model was unloaded")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Item(key, images, future, loop))
        return await future

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        """``first`` and what joins it; True when a stop request arrived meanwhile."""
        items, count = [first], len(first.images)
        deadline = time.monotonic() + self.max_latency_s
        while count < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if self._incoming <= 0 or remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return items, True
            items.append(item)
            count += len(item.images)
        return items, False

    def _call(self, key: Hashable, images: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            outs.append(self._run(key, chunk))
            if self._on_batch:
                self._on_batch(len(chunk))
        return np.concatenate(outs)

    def _engine_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            items, stop = self._gather(first)
            for run in _split_runs(items):
                self._run_batch(run)
            if stop:
                break
        stops = 0
        while True:  # whatever raced past close(): answered, never left waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stops += 1  # another engine thread's: handed back below
            else:
                self._answer([item], None, RuntimeError("the model was unloaded"))
        for _ in range(stops):
            self._queue.put(_STOP)

    def _run_batch(self, run: list[_Item]) -> None:
        live = [it for it in run if not it.future.cancelled()]  # drop cancelled requests
        if not live:
            return
        images = live[0].images if len(live) == 1 else np.concatenate([it.images for it in live])
        try:
            outputs, error = self._call(run[0].key, images), None
        except Exception as e:  # every waiter must hear of an engine fault
            outputs, error = None, e
        self._answer(live, outputs, error)

    @staticmethod
    def _answer(live: list[_Item], outputs: np.ndarray | None, error: BaseException | None) -> None:
        offset = 0
        for it in live:
            n = len(it.images)
            rows = None if outputs is None else outputs[offset : offset + n]
            offset += n
            # RuntimeError: that request's event loop has closed, so nobody waits.
            with contextlib.suppress(RuntimeError):
                it.loop.call_soon_threadsafe(_resolve, it.future, rows, error)

    def close(self) -> None:
        """Stop the engine threads once the batches already queued have run; later
        submissions are refused."""
        self._closed = True
        for _ in self._threads:
            self._queue.put(_STOP)
