"""Client of the model server's Open Inference Protocol (KServe V2) REST endpoint.

Images travel as one ``BYTES`` input of shape ``[B]`` with KServe's binary tensor
extension: a JSON header, then every element as a 4-byte little-endian length
followed by its bytes, the JSON length in the ``Inference-Header-Content-Length``
header. That is what ``kserve.InferRequest.from_bytes`` decodes, and it spares the
~33% size and the CPU of base64 that the JSON encoding of binary data would cost.

Failures are classified for the worker:

- transient (retry later, never acknowledge): connection refused/reset, timeouts,
  HTTP 5xx, 408 and 429;
- configuration (retry later, log loudly): 401/403 (API key) and 404 (wrong model
  name), which say nothing about the photo and must not dead-letter it;
- permanent (dead-letter): other 4xx, e.g. 400 for an image the server cannot decode.

Out-of-distribution verdicts are optional: a model that has an out-of-distribution score
answers ``label`` = :data:`UNKNOWN` for a photo that is none of its classes and may send an
FP32 ``in_distribution_score`` ``[B]`` output (higher: more like the classes); the
probabilities stay over the classes only. A response with neither (an older model) gives a
:class:`Prediction` whose ``unknown`` is None: "no verdict", never "in-distribution".
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from clazzify.core.errors import ClazzifyError, ConfigError
from clazzify.core.v2codec import pack_bytes_tensor, unpack_bytes_tensor

INFERENCE_HEADER = "Inference-Header-Content-Length"

_V2_DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
#: The label a model gives a photo that is none of its classes (V1 ``label``, V2 ``label``).
UNKNOWN = "unknown"
#: The optional V2 output (and V1 field) with the model's in-distribution score.
SCORE_OUTPUT = "in_distribution_score"

_PROBABILITY_OUTPUTS = ("probabilities", "probs", "scores", "output-0", "output_0")
_TRANSIENT_STATUS = {408, 425, 429}
_CONFIG_STATUS = {401, 403, 404}


class EndpointError(ClazzifyError):
    """The model server did not return scores.

    Attributes:
        kind: ``transient`` (retry), ``config`` (retry, fix the deployment) or
            ``permanent`` (the request itself is bad).
        status: the HTTP status, None when no response came back.
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind != "permanent"


@dataclass(frozen=True)
class EndpointConfig:
    """Where the model server is and how to talk to it.

    Attributes:
        url: base URL of the server, e.g. ``http://127.0.0.1:8080``.
        model_name: the name the server serves the model under.
        api_key: sent as ``Authorization: Bearer <key>`` (and ``X-API-Key``) when set.
        timeout_s: read/write timeout of one inference request.
        connect_timeout_s: TCP connect timeout.
        input_name: name of the BYTES input tensor.
        class_names: class order of the probability vector, when the server does not
            name the classes in its response.
    """

    url: str
    model_name: str = "clazzify"
    api_key: str | None = None
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    input_name: str = "image"
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"endpoint URL {self.url!r} must start with http:// or https:// "
                "(e.g. http://127.0.0.1:8080)"
            )
        if not self.model_name or "/" in self.model_name:
            raise ConfigError(f"model name {self.model_name!r} must be non-empty without '/'")
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError(
                f"timeouts must be > 0, got timeout_s={self.timeout_s}, "
                f"connect_timeout_s={self.connect_timeout_s}"
            )


@dataclass(frozen=True)
class Prediction:
    """What the server said about a batch of images.

    Attributes:
        probabilities: float array ``[B, C]``, row ``i`` for the ``i``-th image sent.
        unknown: bool array ``[B]``, True where the model flagged the image as none of its
            classes; None when the model gave no out-of-distribution verdict.
        in_distribution_score: float array ``[B]`` (NaN where the server sent a non-finite
            value); None when the server sent no score.
    """

    model_name: str
    model_version: str
    class_names: tuple[str, ...]
    probabilities: np.ndarray
    unknown: np.ndarray | None = None
    in_distribution_score: np.ndarray | None = None

    def verdict(self, row: int) -> tuple[bool | None, float | None]:
        """``(unknown, in_distribution_score)`` of image ``row``; None where not given."""
        flag = None if self.unknown is None else bool(self.unknown[row])
        score = None
        if self.in_distribution_score is not None:
            value = float(self.in_distribution_score[row])
            score = value if np.isfinite(value) else None
        return flag, score

    def as_dicts(self) -> list[dict[str, float]]:
        return [
            {name: float(p) for name, p in zip(self.class_names, row, strict=True)}
            for row in self.probabilities
        ]


def encode_infer_request(
    images: Sequence[bytes], input_name: str = "image", request_id: str | None = None
) -> tuple[bytes, int]:
    """A V2 infer request with ``images`` as one binary BYTES tensor.

    Returns:
        (body, json_length): send ``body`` with ``Inference-Header-Content-Length: json_length``.
    """
    raw = pack_bytes_tensor(images)
    header = {
        "id": request_id or uuid.uuid4().hex,
        "inputs": [
            {
                "name": input_name,
                "shape": [len(images)],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return head + raw, len(head)


def _tensor(output: Mapping[str, Any], raw: bytes | None) -> np.ndarray:
    dtype_name = output.get("datatype")
    shape = [int(d) for d in output.get("shape", [])]
    if dtype_name == "BYTES":
        if raw is not None:
            items = unpack_bytes_tensor(raw, f"output {output.get('name')!r}")
        else:
            items = output.get("data", [])
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in items]
        return np.array(values, dtype=object).reshape(shape)
    if dtype_name not in _V2_DTYPES:
        raise EndpointError(
            "config", f"output {output.get('name')!r} has unknown datatype {dtype_name!r}"
        )
    dtype = _V2_DTYPES[dtype_name]
    if raw is not None:
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return np.asarray(output.get("data", []), dtype=dtype).reshape(shape)


def decode_infer_response(
    body: bytes, json_length: int | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Split a V2 infer response (JSON or JSON + binary outputs) into its header and tensors.

    Raises:
        EndpointError: the body is not a V2 infer response.
    """
    head = body[:json_length] if json_length is not None else body
    try:
        doc = json.loads(head)
        tensors: dict[str, np.ndarray] = {}
        pos = json_length or 0
        for output in doc["outputs"]:
            size = (output.get("parameters") or {}).get("binary_data_size")
            raw = None
            if size is not None and json_length is not None:
                raw = body[pos : pos + int(size)]
                pos += int(size)
            tensors[output["name"]] = _tensor(output, raw)
    except (ValueError, KeyError, TypeError) as e:  # BytesTensorError is a ValueError
        raise EndpointError(
            "transient", f"model server sent a response that is not a V2 infer response: {e}"
        ) from e
    return doc, tensors


def _class_names_from(
    doc: Mapping[str, Any], tensors: Mapping[str, np.ndarray], prob_name: str
) -> tuple[str, ...] | None:
    candidates: list[Any] = []
    for output in doc.get("outputs", []):
        if output.get("name") == prob_name:
            candidates.append((output.get("parameters") or {}).get("class_names"))
    candidates.append((doc.get("parameters") or {}).get("class_names"))
    for key in ("class_names", "classes"):
        if key in tensors:
            candidates.append([str(v) for v in np.asarray(tensors[key]).reshape(-1)])
    for value in candidates:
        if isinstance(value, str) and value:
            return tuple(v.strip() for v in value.split(","))
        if isinstance(value, list | tuple) and value:
            return tuple(str(v) for v in value)
    return None


def parse_prediction(
    doc: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    batch_size: int,
    fallback_class_names: Sequence[str] = (),
) -> Prediction:
    """Pick the probabilities, class names and model version out of a V2 response.

    Raises:
        EndpointError: the response lacks a ``[batch_size, C]`` probability tensor or
            the class names (kind ``config``: server and worker disagree on the contract,
            which no photo is to blame for).
    """
    prob_name = next((n for n in _PROBABILITY_OUTPUTS if n in tensors), None)
    if prob_name is None:
        prob_name = next(
            (n for n, t in tensors.items() if t.dtype.kind == "f" and t.ndim == 2), None
        )
    if prob_name is None:
        raise EndpointError(
            "config",
            f"response has no probability output (got {sorted(tensors)}); expected an FP32 "
            f"[B, C] output named one of {', '.join(_PROBABILITY_OUTPUTS)}",
        )
    probs = np.asarray(tensors[prob_name], dtype=np.float32)
    if probs.ndim != 2 or probs.shape[0] != batch_size:
        raise EndpointError(
            "config",
            f"output {prob_name!r} has shape {list(probs.shape)}; expected [{batch_size}, C]",
        )
    names = _class_names_from(doc, tensors, prob_name) or tuple(fallback_class_names)
    if len(names) != probs.shape[1]:
        raise EndpointError(
            "config",
            f"{probs.shape[1]} probabilities per image but {len(names)} class names "
            f"({list(names)}): the server must name its classes or pass --class-names",
        )
    unknown, score = _ood_outputs(tensors, batch_size)
    return Prediction(
        model_name=str(doc.get("model_name") or ""),
        model_version=str(doc.get("model_version") or ""),
        class_names=names,
        probabilities=probs,
        unknown=unknown,
        in_distribution_score=score,
    )


def _ood_outputs(
    tensors: Mapping[str, np.ndarray], batch_size: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The optional ``label`` == :data:`UNKNOWN` flags and ``in_distribution_score``.

    A model with an out-of-distribution score is recognised by its score output or by an
    ``unknown`` label; a response with neither carries no verdict (None), because every
    model sends ``label`` and an older one never says ``unknown``.

    Raises:
        EndpointError: kind ``config``, an output has the wrong shape or type.
    """
    score = None
    if SCORE_OUTPUT in tensors:
        raw = np.asarray(tensors[SCORE_OUTPUT])
        if raw.dtype.kind not in "fiu" or raw.reshape(-1).shape != (batch_size,):
            raise EndpointError(
                "config",
                f"output {SCORE_OUTPUT!r} is {raw.dtype} {list(raw.shape)}; expected FP32 "
                f"[{batch_size}]",
            )
        score = raw.reshape(-1).astype(np.float64)
        score[~np.isfinite(score)] = np.nan
    labels = None
    if "label" in tensors:
        raw = np.asarray(tensors["label"], dtype=object).reshape(-1)
        if raw.shape != (batch_size,):
            raise EndpointError(
                "config", f"output 'label' has shape {list(raw.shape)}; expected [{batch_size}]"
            )
        labels = np.array([str(v) == UNKNOWN for v in raw], dtype=bool)
    if score is None and (labels is None or not labels.any()):
        return None, None
    if labels is None:
        labels = np.zeros(batch_size, dtype=bool)
    return labels, score


def parse_v1_predictions(
    doc: Mapping[str, Any], batch_size: int, class_names: Sequence[str] = ()
) -> Prediction:
    """A :class:`Prediction` from a V1 answer ``{"predictions": [{...}, ...]}``.

    Each prediction carries ``probabilities`` (class -> probability), ``label``,
    ``model_name``, ``model_version``, and optionally ``in_distribution_score``; ``label`` is
    :data:`UNKNOWN` for a flagged photo. Absent fields mean "no out-of-distribution score".

    Raises:
        EndpointError: kind ``config``, the answer does not have that shape.
    """
    rows = doc.get("predictions") if isinstance(doc, Mapping) else None
    if not isinstance(rows, list) or len(rows) != batch_size:
        raise EndpointError(
            "config", f"V1 answer needs a 'predictions' list of {batch_size} entries"
        )
    try:
        names = tuple(class_names) or tuple(rows[0]["probabilities"])
        probs = np.array(
            [[float(r["probabilities"][n]) for n in names] for r in rows], dtype=np.float32
        ).reshape(batch_size, len(names))
        flags = np.array([str(r.get("label")) == UNKNOWN for r in rows], dtype=bool)
        has_score = any(SCORE_OUTPUT in r for r in rows)
        score = None
        if has_score:
            score = np.array(
                [float(r[SCORE_OUTPUT]) if r.get(SCORE_OUTPUT) is not None else np.nan
                 for r in rows],
                dtype=np.float64,
            )
            score[~np.isfinite(score)] = np.nan
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise EndpointError("config", f"V1 answer is not a list of predictions: {e!r}") from e
    unknown = flags if has_score or flags.any() else None
    return Prediction(
        model_name=str(rows[0].get("model_name") or "") if rows else "",
        model_version=str(rows[0].get("model_version") or "") if rows else "",
        class_names=names,
        probabilities=probs,
        unknown=unknown,
        in_distribution_score=score,
    )


def classify_status(status: int) -> str:
    """``transient``, ``config`` or ``permanent`` for an HTTP error status (see module doc)."""
    if status >= 500 or status in _TRANSIENT_STATUS:
        return "transient"
    if status in _CONFIG_STATUS:
        return "config"
    return "permanent"


def _probe_image() -> bytes:
    """A small grey PNG: enough for the server to answer with its model version."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


class EndpointClient:
    """A keep-alive HTTP client of one model on a V2 server; one per worker thread."""

    def __init__(
        self, config: EndpointConfig, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.config = config
        headers = {}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
            headers["X-API-Key"] = config.api_key
        self._http = httpx.Client(
            base_url=config.url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _post(self, path: str, body: bytes, headers: Mapping[str, str]) -> httpx.Response:
        try:
            response = self._http.post(path, content=body, headers=dict(headers))
        except httpx.TimeoutException as e:
            raise EndpointError(
                "transient", f"model server {self.config.url} timed out: {e.__class__.__name__}"
            ) from e
        except httpx.HTTPError as e:  # connection refused/reset, protocol errors
            raise EndpointError(
                "transient",
                f"cannot reach model server {self.config.url}: {e.__class__.__name__}: {e}",
            ) from e
        if response.status_code >= 400:
            detail = response.text[:300].strip()
            status = response.status_code
            kind = classify_status(status)
            hint = {
                401: " (check --api-key / CLAZZIFY_API_KEY)",
                403: " (check --api-key / CLAZZIFY_API_KEY)",
                404: f" (is the model served as {self.config.model_name!r}? check --model-name)",
            }.get(status, "")
            raise EndpointError(
                kind, f"model server answered HTTP {status}{hint}: {detail}", status
            )
        return response

    def infer(self, images: Sequence[bytes]) -> Prediction:
        """Class probabilities for encoded images, one request for the whole batch.

        Raises:
            EndpointError: classified as transient, config or permanent.
        """
        if not images:
            raise ConfigError("infer() needs at least one image")
        body, json_length = encode_infer_request(images, self.config.input_name)
        response = self._post(
            f"/v2/models/{self.config.model_name}/infer",
            body,
            {"Content-Type": "application/octet-stream", INFERENCE_HEADER: str(json_length)},
        )
        length = response.headers.get(INFERENCE_HEADER)
        doc, tensors = decode_infer_response(response.content, int(length) if length else None)
        prediction = parse_prediction(doc, tensors, len(images), self.config.class_names)
        if not prediction.model_version:
            raise EndpointError(
                "config",
                "model server response carries no model_version: the worker cannot key the "
                "scores; serve a registered model version",
            )
        return prediction

    def probe(self) -> Prediction:
        """Score one synthetic image: tells which model version the server runs right now."""
        return self.infer([_probe_image()])

    def ready(self) -> bool:
        """True when ``GET /v2/models/{name}/ready`` says the model is loaded."""
        try:
            response = self._http.get(f"/v2/models/{self.config.model_name}/ready")
        except httpx.HTTPError:
            return False
        return response.status_code == 200
