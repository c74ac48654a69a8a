"""The ``kserve.Model``: preprocess -> batched engine -> answers, with hot swaps."""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from clazzify.core.errors import ClazzifyError, DataError
from clazzify.core.ood import rule_of, split_for
from clazzify.serving.batching import Batcher
from clazzify.serving.config import ServerConfig, ServingLimits, parse_model_uri
from clazzify.serving.engine import AliasWatcher, Engine, load_engine, resolve_alias
from clazzify.serving.metrics import ServingMetrics
from clazzify.serving.protocol import (
    PayloadError,
    check_probabilities,
    decode_batch,
    open_images,
    v1_images,
    v1_predictions,
    v2_images,
    v2_metadata,
    v2_outputs,
    with_raw_contents,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    pixels: np.ndarray
    engine: Engine
    v2: InferRequest | None


@dataclass(frozen=True)
class _Scored:
    probs: np.ndarray
    engine: Engine
    v2: InferRequest | None


class PixelGate:
    """A weighted semaphore on decoded pixels: requests decode concurrently only while the
    sum of their pixels stays within ``capacity``, so decode memory has a ceiling whatever
    the number of clients. A request never asks for more than ``capacity``
    (``ServingLimits`` checks ``max_request_pixels <= max_decoding_pixels``).

    Held by the decoding threads themselves, so one worker call reads the headers, waits
    for room and decodes: a second trip through the event loop cost a request 3 ms of
    waiting at 8 concurrent clients (benchmarks/README.md, "int8"). A thread waits only
    for threads that are decoding, which never wait for anything, so it cannot deadlock.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


class ClazzifyKServeModel(Model):
    """Classifies encoded photos sent as KServe V1 ``b64`` instances or a V2 BYTES input."""

    def __init__(
        self, cfg: ServerConfig, metrics: ServingMetrics, version_override: str | None = None
    ) -> None:
        super().__init__(cfg.model_name)
        self.cfg = cfg
        self.source = parse_model_uri(cfg.model_uri)
        self.metrics = metrics
        self.version_override = version_override
        self.engine: Engine | None = None
        self._watcher: AliasWatcher | None = None
        self._batcher: Batcher | None = None  # made by load(), as many threads as the engine takes
        self._stopped = False
        self._decoding = PixelGate(cfg.limits.max_decoding_pixels)

    def _new_batcher(self, workers: int) -> Batcher:
        return Batcher(
            lambda engine, images: engine.predict(images),
            self.cfg.max_batch_size,
            self.cfg.max_latency_ms / 1000.0,
            on_batch=self.metrics.batch_size.observe,
            workers=workers,
        )

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> bool:
        """Load the engine (again, after :meth:`stop`: the repository extension's load)."""
        engine = load_engine(self.source, self.cfg.engine, version_override=self.version_override)
        if self._batcher is None or self._stopped:
            self._batcher = self._new_batcher(engine.predictor.concurrency)
            self._stopped = False
        self._install(engine)
        if self.cfg.watch_interval_s:
            self._watcher = AliasWatcher(
                self.source.uri, lambda: resolve_alias(self.source), self.cfg.watch_interval_s,
                lambda: self.engine.version, self.swap_to,
            )
            self._watcher.start()
        self.ready = True
        return self.ready

    def _install(self, engine: Engine) -> None:
        old, self.engine = self.engine, engine  # one reference swap: requests hold their own
        self.metrics.set_model(self.name, engine.version, engine.predictor.engine)
        if old is not None and old.owned_dir is not None:
            # Both engines have their weights in memory; the old download folder can go.
            shutil.rmtree(old.owned_dir, ignore_errors=True)

    def swap_to(self, version: str) -> None:
        """Load ``version`` of the watched alias and make it the served model.

        Requests already decoded for the old model finish on it (the batcher keys batches
        on the engine object), so a swap fails nothing in flight.
        """
        log.info("alias %s moved to version %s: loading it", self.source.uri, version)
        self._install(load_engine(self.source, self.cfg.engine, version=version))
        self.metrics.swaps.inc()

    def stop(self) -> None:
        self.ready = False
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        if self._batcher is not None:
            self._batcher.close()
        self._stopped = True

    # ---------------------------------------------------------------- metadata

    def get_input_types(self) -> list[dict]:
        return v2_metadata(self.engine.meta.class_names)[0]

    def get_output_types(self) -> list[dict]:
        return v2_metadata(self.engine.meta.class_names, rule_of(self.engine.meta) is not None)[1]

    # ---------------------------------------------------------------- inference

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess has validated it already

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> _Prepared:
        engine = self.engine
        limits = self.cfg.limits
        with self._batcher.expecting():
            try:
                loop = asyncio.get_running_loop()
                size = engine.meta.image_size
                # base64, the headers and the pixels in one worker call: the event loop
                # only routes (base64 of a photo cost a sixth of its time, profiled).
                pixels = await loop.run_in_executor(
                    None, _decode_payload, payload, size, limits, self._decoding)
            except PayloadError as e:
                raise InvalidInput(str(e)) from e
        return _Prepared(pixels, engine, payload if isinstance(payload, InferRequest) else None)

    async def predict(self, payload: _Prepared, headers: dict[str, str] | None = None) -> _Scored:
        probs = await self._batcher.submit(payload.engine, payload.pixels)
        return _Scored(probs, payload.engine, payload.v2)

    async def postprocess(
        self, result: _Scored, headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict | InferResponse:
        meta = result.engine.meta
        names = meta.class_names
        raw = np.asarray(result.probs, dtype=np.float32)
        try:
            probs, scores, labels = split_for(meta, raw, result.engine.predictor.engine)
        except DataError as e:  # the bundle's clazzify.json does not match its model
            raise ClazzifyError(f"model outputs do not match its metadata: {e}") from e
        probs = check_probabilities(probs, len(raw), names)
        if rule_of(meta) is None:
            scores = None  # a model without an unknown rule answers as before
        for label in labels:
            self.metrics.predictions.labels(label).inc()
        if result.v2 is None:
            return {"predictions": v1_predictions(probs, names, self.name, result.engine.version, labels, scores)}
        outputs = [InferOutput(**out) for out in v2_outputs(probs, names, labels, scores)]
        return InferResponse(
            response_id=result.v2.id, model_name=self.name, infer_outputs=outputs,
            model_version=result.engine.version,
        )


def _decode_payload(payload: Any, size: int, limits: ServingLimits, gate: PixelGate) -> np.ndarray:
    """The request's images as the model's uint8 batch: base64 decoded, every header checked
    against the limits before any pixel is decoded, then decoded within ``gate``."""
    v2 = isinstance(payload, InferRequest)
    blobs = v2_images(_v2_inputs(payload), limits) if v2 else v1_images(payload, limits)
    opened = open_images(blobs, size, limits)
    with gate.hold(opened.pixels):
        return decode_batch(opened, size)


def _v2_inputs(request: InferRequest) -> list[dict]:
    """The request's inputs as dicts, a gRPC ``raw_input_contents`` tensor unpacked.

    KServe 0.21 keeps a raw tensor in ``InferInput._raw_data`` (``as_numpy`` reads it, but
    splits elements with no bounds check), and has no public accessor for the bytes.
    """
    return [with_raw_contents(inp.to_dict(), getattr(inp, "_raw_data", None), f"inputs[{i}]")
            for i, inp in enumerate(request.inputs)]
