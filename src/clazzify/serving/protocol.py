"""Serving's logic as pure functions: payloads in, training's pixels to the model, answers out.

The model server (:mod:`clazzify.serving.model`) is a thin KServe edge over this module:

- :func:`v1_images` / :func:`parse_v2_body` + :func:`v2_images` turn a request body into
  encoded image bytes, with a :class:`PayloadError` naming the problem for any bad input;
- :func:`images_to_batch` decodes them with :func:`clazzify.core.imaging.image_to_array`, the
  very function the HDF5 builder used, so the model sees the pixels training stored;
- :func:`v1_predictions` / :func:`v2_outputs` shape the model's probabilities into answers;

Authentication lives in :mod:`clazzify.serving.auth`, the server's configuration in
:mod:`clazzify.serving.config`.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64
from PIL import Image

from clazzify.core.errors import ClazzifyError, ImageError
from clazzify.core.imaging import decoded_pixels, open_image, opened_to_array
from clazzify.core.v2codec import BytesTensorError, unpack_bytes_tensor
from clazzify.serving.config import ServingLimits

#: Name of the single V2 input tensor (any name is accepted; this is what metadata advertises).
V2_INPUT = "image"
#: Header of the V2 binary-data extension: length of the JSON part before the raw tensors.
V2_BINARY_HEADER = "inference-header-content-length"


class PayloadError(ClazzifyError, ValueError):
    """A request body the server cannot use; the message names the problem (HTTP 400)."""


# --------------------------------------------------------------------------- payloads


def decode_b64(value: object, where: str) -> bytes:
    """Strict base64 (standard alphabet, padding required) -> bytes.

    Raises:
        PayloadError: ``value`` is not a string or not valid base64.
    """
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected a base64 string, got {type(value).__name__}")
    try:
        # pybase64's SIMD decoder: 5 us for an 80 KB photo against 190 us for binascii
        # (benchmarks/README.md, "Fourth pass"); it accepts exactly what strict binascii does.
        return pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:  # only to name the problem: binascii's messages say what is wrong and where
        binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as e:
        raise PayloadError(f"{where}: invalid base64 ({e})") from e
    raise PayloadError(f"{where}: invalid base64")


def load_json(body: bytes | str) -> object:
    """Parse a JSON body.

    Raises:
        PayloadError: the body is empty or not valid JSON.
    """
    if not body:
        raise PayloadError("request body is empty: send JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise PayloadError(f"malformed JSON: {e}") from e


def _check_count(n: int, limits: ServingLimits, what: str) -> None:
    if n == 0:
        raise PayloadError(f"{what} is empty: send at least one image")
    if n > limits.max_images:
        raise PayloadError(
            f"{what} holds {n} images; at most {limits.max_images} per request: split the request"
        )


def v1_images(body: object, limits: ServingLimits) -> list[bytes]:
    """Encoded images of a KServe V1 body ``{"instances": [{"b64": "..."}, ...]}``.

    Raises:
        PayloadError: wrong shape, too many or no instances, or bad base64.
    """
    if isinstance(body, bytes | str):
        body = load_json(body)
    if not isinstance(body, Mapping) or "instances" not in body:
        raise PayloadError('expected a JSON object {"instances": [{"b64": "<image bytes>"}, ...]}')
    instances = body["instances"]
    if not isinstance(instances, list):
        raise PayloadError(f'"instances" must be a list, got {type(instances).__name__}')
    _check_count(len(instances), limits, '"instances"')
    out = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, Mapping) or "b64" not in inst:
            raise PayloadError(f'instances[{i}]: expected {{"b64": "<base64 image bytes>"}}')
        out.append(decode_b64(inst["b64"], f"instances[{i}].b64"))
    return out


def parse_v2_body(body: bytes, header_length: str | None) -> dict[str, Any]:
    """Parse an Open Inference Protocol (V2) infer body, JSON or binary-extension.

    With the binary extension (``header_length`` set), the JSON header is followed by
    raw tensors; a BYTES input's ``data`` is replaced by its list of raw elements.

    Raises:
        PayloadError: bad header length, malformed JSON, or binary sizes that do not add up.
    """
    if header_length is None:
        request = load_json(body)
        raw = b""
    else:
        try:
            json_length = int(header_length)
        except ValueError as e:
            raise PayloadError(
                f"{V2_BINARY_HEADER} must be an integer, got {header_length[:40]!r}"
            ) from e
        if not 0 < json_length <= len(body):
            raise PayloadError(
                f"{V2_BINARY_HEADER}={json_length} is outside the {len(body)}-byte body"
            )
        request = load_json(body[:json_length])
        raw = body[json_length:]
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise PayloadError(
            'expected a JSON object {"inputs": [{"name", "shape", "datatype", "data"}]}'
        )
    offset = 0
    for i, inp in enumerate(request["inputs"]):
        if not isinstance(inp, dict):
            raise PayloadError(f"inputs[{i}] must be an object, got {type(inp).__name__}")
        params = inp.get("parameters")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        if header_length is None:
            raise PayloadError(
                f"inputs[{i}] has binary_data_size but the {V2_BINARY_HEADER} header is missing"
            )
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PayloadError(f"inputs[{i}].parameters.binary_data_size must be an integer >= 0")
        if offset + size > len(raw):
            raise PayloadError(
                f"inputs[{i}] declares {size} binary bytes but only {len(raw) - offset} follow"
            )
        chunk = raw[offset : offset + size]
        offset += size
        if inp.get("datatype") != "BYTES":
            raise PayloadError(f"inputs[{i}]: only BYTES inputs (encoded images) are accepted")
        try:
            inp["data"] = unpack_bytes_tensor(chunk, f"inputs[{i}]")
        except BytesTensorError as e:
            raise PayloadError(str(e)) from e
    return request


def with_raw_contents(inp: Mapping[str, Any], raw: bytes | None, where: str) -> dict[str, Any]:
    """A V2 input whose tensor came as raw bytes (gRPC ``raw_input_contents``), with
    ``data`` set to its elements.

    The Open Inference Protocol frames a raw BYTES tensor as the binary extension does:
    each element a 4-byte little-endian length, then its bytes. KServe's
    ``InferInput.set_data_from_numpy(..., binary_data=True)`` sends images this way, the
    only way its gRPC client carries bytes that are not UTF-8.

    Raises:
        PayloadError: a raw tensor that is not BYTES, or lengths that do not add up.
    """
    out = dict(inp)
    if raw is None:
        return out
    if inp.get("datatype") != "BYTES":
        raise PayloadError(f"{where}: only BYTES inputs (encoded images) are accepted, got "
                           f"{inp.get('datatype')!r} in raw_input_contents")
    try:
        out["data"] = unpack_bytes_tensor(raw, where)
    except BytesTensorError as e:
        raise PayloadError(f"{e} (raw_input_contents: 4-byte little-endian length, then the "
                           "bytes, per element)") from e
    return out


def v2_images(inputs: Sequence[Mapping[str, Any]], limits: ServingLimits) -> list[bytes]:
    """Encoded images of the one V2 BYTES input (base64 strings in JSON, raw bytes in binary).

    Raises:
        PayloadError: not exactly one input, not BYTES, a shape that does not match the
            data, too many or no images, or bad base64.
    """
    if len(inputs) != 1:
        raise PayloadError(f"expected exactly one input (the encoded images), got {len(inputs)}")
    inp = inputs[0]
    name = inp.get("name") or V2_INPUT
    if inp.get("datatype") != "BYTES":
        raise PayloadError(
            f"input {name!r} has datatype {inp.get('datatype')!r}: send encoded image bytes as "
            "BYTES (pixel tensors are not accepted)"
        )
    data = inp.get("data")
    if not isinstance(data, list):
        raise PayloadError(f"input {name!r}: 'data' must be a list of base64 strings")
    if data and all(isinstance(row, list) for row in data):
        data = [item for row in data for item in row]  # [[b64], [b64]] for shape [N, 1]
    shape = inp.get("shape")
    if not (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and len(shape) in (1, 2)
        and (len(shape) == 1 or shape[1] == 1)
    ):
        raise PayloadError(f"input {name!r}: shape must be [N] or [N, 1], got {shape!r}")
    if shape[0] != len(data):
        raise PayloadError(
            f"input {name!r}: shape says {shape[0]} images but data holds {len(data)}"
        )
    _check_count(len(data), limits, f"input {name!r}")
    return [
        item if isinstance(item, bytes) else decode_b64(item, f"input {name!r}[{i}]")
        for i, item in enumerate(data)
    ]


@dataclass(frozen=True)
class OpenedImages:
    """A request's images with only their headers read, and what decoding them will cost.

    Attributes:
        images: the opened images, in request order.
        pixels: the pixels decoding them will hold, summed (see
            :func:`clazzify.core.imaging.decoded_pixels`).
    """

    images: list[Image.Image]
    pixels: int


def open_images(blobs: Sequence[bytes], image_size: int, limits: ServingLimits) -> OpenedImages:
    """Read every image's header and check the request's pixel budget; decode nothing.

    Raises:
        PayloadError: naming the index and the reason (empty, not an image, unreadable
            header, too small, too many pixels), or the request over
            ``limits.max_request_pixels``.
    """
    opened = []
    total = 0
    for i, blob in enumerate(blobs):
        try:
            img = open_image(blob, limits.image_limits)  # the header only
        except ImageError as e:
            raise PayloadError(f"image {i}: {e.reason}: {e}") from e
        total += decoded_pixels(img, image_size)
        if total > limits.max_request_pixels:
            raise PayloadError(
                f"too_large: images 0..{i} would decode to {total} pixels, over the "
                f"{limits.max_request_pixels}-pixel budget of one request: send fewer or "
                "smaller images per request"
            )
        opened.append(img)
    return OpenedImages(opened, total)


def decode_batch(opened: OpenedImages, image_size: int) -> np.ndarray:
    """Decode :func:`open_images`' images into the uint8 ``[N, S, S, 3]`` batch the model takes,
    each with :func:`clazzify.core.imaging.opened_to_array`, i.e. ``image_to_array``, the
    function that built the training data.

    Raises:
        PayloadError: naming the index, for truncated or corrupt image data.
    """
    batch = np.empty((len(opened.images), image_size, image_size, 3), dtype=np.uint8)
    for i, img in enumerate(opened.images):
        try:
            batch[i] = opened_to_array(img, image_size)
        except ImageError as e:
            raise PayloadError(f"image {i}: {e.reason}: {e}") from e
    return batch


def images_to_batch(blobs: Sequence[bytes], image_size: int, limits: ServingLimits) -> np.ndarray:
    """:func:`open_images` then :func:`decode_batch`: every header is read (and the request's
    pixel budget checked) before any pixel is decoded.

    Raises:
        PayloadError: as :func:`open_images` and :func:`decode_batch`.
    """
    return decode_batch(open_images(blobs, image_size, limits), image_size)


# --------------------------------------------------------------------------- answers


def check_probabilities(probs: np.ndarray, n_images: int, class_names: Sequence[str]) -> np.ndarray:
    """The engine's output as float32 ``[n_images, n_classes]``; anything else is a model fault.

    Raises:
        ClazzifyError: wrong shape or non-finite values (a broken model, not bad input).
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (n_images, len(class_names)):
        raise ClazzifyError(
            f"model returned shape {probs.shape} for {n_images} images and {len(class_names)} "
            "classes: the bundle's clazzify.json does not match its model"
        )
    if not np.isfinite(probs).all():
        raise ClazzifyError("model returned non-finite probabilities")
    return probs


def v1_predictions(
    probs: np.ndarray, class_names: Sequence[str], model_name: str, model_version: str,
    labels: Sequence[str] | None = None, scores: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One answer per image: its label (the top class, or ``unknown`` where the model's
    unknown rule flags it), the top class's probability, every class's probability, the
    in-distribution score when the model has one, and the model."""
    top = probs.argmax(axis=1)
    rows = probs.tolist()
    labels = list(labels) if labels is not None else [class_names[k] for k in top.tolist()]
    answers = []
    for i, (k, row) in enumerate(zip(top.tolist(), rows, strict=True)):
        answer = {
            "label": labels[i],
            "probability": row[k],
            "probabilities": dict(zip(class_names, row, strict=True)),
            "model_name": model_name,
            "model_version": model_version,
        }
        if scores is not None:
            answer["in_distribution_score"] = float(scores[i])
        answers.append(answer)
    return answers


def v2_outputs(probs: np.ndarray, class_names: Sequence[str], labels: Sequence[str] | None = None,
               scores: np.ndarray | None = None) -> list[dict[str, Any]]:
    """V2 output tensors: ``label`` [N] (``unknown`` where flagged), ``probabilities`` [N, C]
    over the classes, ``class_names`` [C], and ``in_distribution_score`` [N] when the model
    has one (higher = more like the training photos)."""
    n, c = probs.shape
    labels = list(labels) if labels is not None else [class_names[k] for k in probs.argmax(axis=1).tolist()]
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels},
        {"name": "probabilities", "datatype": "FP32", "shape": [n, c],
         "data": probs.reshape(-1).tolist()},
        {"name": "class_names", "datatype": "BYTES", "shape": [c], "data": list(class_names)},
    ]
    if scores is not None:
        outputs.append({"name": "in_distribution_score", "datatype": "FP32", "shape": [n],
                        "data": np.asarray(scores, np.float32).tolist()})
    return outputs


def v2_metadata(class_names: Sequence[str], scored: bool = True) -> tuple[list[dict], list[dict]]:
    """V2 model metadata: the input and output tensors of :func:`v2_images` / :func:`v2_outputs`."""
    c = len(class_names)
    inputs = [{"name": V2_INPUT, "datatype": "BYTES", "shape": [-1]}]
    outputs = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, c]},
        {"name": "class_names", "datatype": "BYTES", "shape": [c]},
    ]
    if scored:  # a model with an unknown rule (every model trained since it exists)
        outputs.append({"name": "in_distribution_score", "datatype": "FP32", "shape": [-1]})
    return inputs, outputs

