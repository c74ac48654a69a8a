"""Adaptive batching: concurrent requests share one engine call.

A request that reaches the queue starts a batch. The batch then takes whatever else is
queued and, while other requests are still being decoded (so more will arrive soon),
waits for them up to ``max_latency_s`` or until ``max_batch_size`` images are gathered.
With nothing else in flight it runs at once, so a lone request pays no batching delay;
under load, requests pile up while the engine runs and the next batch is full at once.

The engine runs in one dedicated thread (ONNX Runtime and TensorFlow release the GIL and
use their own intra-op threads), so the event loop keeps accepting and decoding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
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


def _split_runs(items: list[_Item]) -> Iterator[list[_Item]]:
    """Consecutive items with the same key (a hot swap can put two models in one batch)."""
    start = 0
    for i in range(1, len(items) + 1):
        if i == len(items) or items[i].key is not items[start].key:
            yield items[start:i]
            start = i


class Batcher:
    """Gathers submitted image arrays into batches of at most ``max_batch_size`` images.

    Args:
        run: the engine call, made from one worker thread.
        max_batch_size: most images per engine call (larger requests are split).
        max_latency_s: longest the first request of a batch waits for others.
        on_batch: called with the size of every engine call (metrics).
    """

    def __init__(
        self,
        run: RunFn,
        max_batch_size: int,
        max_latency_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._on_batch = on_batch
        self._incoming = 0
        self._queue: asyncio.Queue[_Item] | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="clazzify-engine")

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
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(key, images, future))
        return await future

    async def _gather(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        loop = asyncio.get_running_loop()
        items = [await queue.get()]
        count = len(items[0].images)
        deadline = loop.time() + self.max_latency_s
        while count < self.max_batch_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if self._incoming == 0 or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    break
            items.append(item)
            count += len(item.images)
        return items

    def _call(self, key: Hashable, images: np.ndarray) -> np.ndarray:
        outs = []
        for start in range(0, len(images), self.max_batch_size):
            chunk = images[start : start + self.max_batch_size]
            outs.append(self._run(key, chunk))
            if self._on_batch:
                self._on_batch(len(chunk))
        return np.concatenate(outs)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = await self._gather(queue)
            for run in _split_runs(items):
                live = [it for it in run if not it.future.done()]  # drop cancelled requests
                if not live:
                    continue
                images = live[0].images if len(live) == 1 else np.concatenate(
                    [it.images for it in live]
                )
                try:
                    outputs = await loop.run_in_executor(
                        self._executor, self._call, run[0].key, images
                    )
                except Exception as e:  # every waiter must hear of an engine fault
                    for it in live:
                        if not it.future.done():
                            it.future.set_exception(e)
                    continue
                offset = 0
                for it in live:
                    n = len(it.images)
                    if not it.future.done():
                        it.future.set_result(outputs[offset : offset + n])
                    offset += n

    def close(self) -> None:
        """Stop the worker and the engine thread."""
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
