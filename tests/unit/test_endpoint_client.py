"""The V2 client's wire format, checked against KServe's own request/response codecs."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from clazzify.core.errors import ConfigError
from clazzify.scoring.endpoint_client import (
    EndpointConfig,
    EndpointError,
    classify_status,
    decode_infer_response,
    encode_infer_request,
    parse_prediction,
)

pytestmark = pytest.mark.unit

CLASSES = ["ambiance", "food", "human", "menu"]


def test_request_framing_decodes_with_kserve_from_bytes() -> None:
    from kserve.protocol.infer_type import InferRequest

    # KServe 0.21's from_bytes re-encodes BYTES elements as UTF-8 text, so it can only
    # check the framing with text payloads; real image bytes go through the model
    # server's own binary parser.
    images = [b"first image", b"", b"third"]
    body, json_length = encode_infer_request(images, "image", request_id="r1")
    request = InferRequest.from_bytes(body, json_length, "clazzify")
    [tensor] = request.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("image", "BYTES", [3])
    assert [s.encode() for s in tensor.as_numpy()] == images
    assert request.id == "r1"


def _kserve_response(probs: np.ndarray, binary: bool, version: str = "7"):
    from kserve.protocol.infer_type import InferOutput, InferResponse

    n, c = probs.shape
    outputs = [
        InferOutput("label", [n], "BYTES", [CLASSES[k] for k in probs.argmax(1)]),
        InferOutput("probabilities", [n, c], "FP32", probs),
        InferOutput("class_names", [c], "BYTES", list(CLASSES)),
    ]
    for out in outputs:
        if isinstance(out.data, list):
            out.set_data_from_numpy(np.array(out.data, dtype=object), binary_data=binary)
        else:
            out.set_data_from_numpy(out.data, binary_data=binary)
    response = InferResponse(
        "r1", "clazzify", outputs, model_version=version, use_binary_outputs=binary
    )
    body, json_length = response.to_rest()
    if json_length is None:
        body = json.dumps(body).encode()
    return body, json_length


@pytest.mark.parametrize("binary", [False, True])
def test_response_from_kserve_parses_into_a_prediction(binary: bool) -> None:
    probs = np.array([[0.1, 0.7, 0.1, 0.1], [0.25, 0.25, 0.4, 0.1]], dtype=np.float32)
    body, json_length = _kserve_response(probs, binary)
    doc, tensors = decode_infer_response(body, json_length)
    prediction = parse_prediction(doc, tensors, 2)
    assert prediction.model_name == "clazzify"
    assert prediction.model_version == "7"
    assert prediction.class_names == tuple(CLASSES)
    np.testing.assert_allclose(prediction.probabilities, probs)
    assert prediction.as_dicts()[1]["human"] == pytest.approx(0.4)


def test_class_names_fall_back_to_configuration() -> None:
    doc = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.3, 0.7]}
        ],
    }
    _, tensors = decode_infer_response(json.dumps(doc).encode())
    assert parse_prediction(doc, tensors, 1, ["cat", "dog"]).class_names == ("cat", "dog")
    with pytest.raises(EndpointError, match="class names") as info:
        parse_prediction(doc, tensors, 1)
    assert info.value.kind == "config"


def test_a_wrong_batch_dimension_is_a_contract_error() -> None:
    probs = np.full((2, 4), 0.25, dtype=np.float32)
    body, json_length = _kserve_response(probs, binary=False)
    doc, tensors = decode_infer_response(body, json_length)
    with pytest.raises(EndpointError, match=r"expected \[3, C\]"):
        parse_prediction(doc, tensors, 3)


def test_garbage_response_is_transient() -> None:
    with pytest.raises(EndpointError) as info:
        decode_infer_response(b"<html>502 Bad Gateway</html>")
    assert info.value.kind == "transient"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "permanent"),
        (413, "permanent"),
        (422, "permanent"),
        (401, "config"),
        (403, "config"),
        (404, "config"),
        (408, "transient"),
        (429, "transient"),
        (500, "transient"),
        (502, "transient"),
        (503, "transient"),
        (504, "transient"),
    ],
)
def test_http_status_classes(status: int, kind: str) -> None:
    assert classify_status(status) == kind


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "127.0.0.1:8080"},
        {"url": "http://x", "model_name": "a/b"},
        {"url": "http://x", "timeout_s": 0},
    ],
)
def test_bad_endpoint_config_is_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        EndpointConfig(**kwargs)


def test_request_parses_with_the_model_servers_own_parser() -> None:
    from _scoring import png_bytes

    from clazzify.serving.config import ServingLimits
    from clazzify.serving.protocol import V2_BINARY_HEADER, parse_v2_body, v2_images

    images = [png_bytes((255, 0, 0)), b"\xff\xd8\xff\xe0 not utf-8 \x80\x81", png_bytes((0, 0, 9))]
    body, json_length = encode_infer_request(images)
    parsed = parse_v2_body(body, str(json_length))
    assert v2_images(parsed["inputs"], ServingLimits()) == images
    assert V2_BINARY_HEADER.lower() == "inference-header-content-length"


def test_a_binary_bytes_output_that_runs_past_its_end_is_a_bad_response() -> None:
    # Before the shared codec the client sliced past the end and returned short labels.
    raw = struct.pack("<I", 9) + b"abc"
    doc = {
        "model_name": "m",
        "model_version": "1",
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [1],
             "parameters": {"binary_data_size": len(raw)}},
        ],
    }
    head = json.dumps(doc).encode()
    with pytest.raises(EndpointError, match="'label': element of 9 bytes") as info:
        decode_infer_response(head + raw, len(head))
    assert info.value.kind == "transient"


def _ood_response(labels: list[str], score: list[float] | None, binary: bool):
    from kserve.protocol.infer_type import InferOutput, InferResponse

    n = len(labels)
    probs = np.full((n, len(CLASSES)), 0.25, dtype=np.float32)
    outputs = [
        InferOutput("label", [n], "BYTES", None),
        InferOutput("probabilities", [n, len(CLASSES)], "FP32", None),
        InferOutput("class_names", [len(CLASSES)], "BYTES", None),
    ]
    outputs[0].set_data_from_numpy(np.array(labels, dtype=object), binary_data=binary)
    outputs[1].set_data_from_numpy(probs, binary_data=binary)
    outputs[2].set_data_from_numpy(np.array(CLASSES, dtype=object), binary_data=binary)
    if score is not None:
        out = InferOutput("in_distribution_score", [n], "FP32", None)
        out.set_data_from_numpy(np.array(score, dtype=np.float32), binary_data=binary)
        outputs.append(out)
    body, json_length = InferResponse(
        "r1", "clazzify", outputs, model_version="9", use_binary_outputs=binary
    ).to_rest()
    if json_length is None:
        body = json.dumps(body).encode()
    return decode_infer_response(body, json_length)


@pytest.mark.parametrize("binary", [False, True])
def test_an_unknown_label_and_the_score_are_read(binary: bool) -> None:
    doc, tensors = _ood_response(["food", "unknown", "menu"], [3.5, -2.0, float("nan")], binary)
    prediction = parse_prediction(doc, tensors, 3)
    assert prediction.unknown.tolist() == [False, True, False]
    assert prediction.verdict(0) == (False, pytest.approx(3.5))
    assert prediction.verdict(1) == (True, pytest.approx(-2.0))
    assert prediction.verdict(2) == (False, None)  # a non-finite score is no score
    assert prediction.probabilities.shape == (3, 4)  # over the classes only


def test_an_unknown_label_without_a_score_is_still_a_verdict() -> None:
    doc, tensors = _ood_response(["unknown", "food"], None, binary=False)
    prediction = parse_prediction(doc, tensors, 2)
    assert [prediction.verdict(i) for i in range(2)] == [(True, None), (False, None)]


def test_an_older_model_gives_no_verdict() -> None:
    """No score output and no 'unknown' label: None, never "in-distribution"."""
    doc, tensors = _ood_response(["food", "menu"], None, binary=True)
    prediction = parse_prediction(doc, tensors, 2)
    assert prediction.unknown is None and prediction.in_distribution_score is None
    assert prediction.verdict(1) == (None, None)


def test_a_score_of_the_wrong_shape_is_a_contract_error() -> None:
    doc, tensors = _ood_response(["food", "menu"], [1.0, 2.0], binary=False)
    tensors["in_distribution_score"] = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    with pytest.raises(EndpointError, match="in_distribution_score") as info:
        parse_prediction(doc, tensors, 2)
    assert info.value.kind == "config"


def test_v1_predictions_carry_the_verdict() -> None:
    from clazzify.scoring.endpoint_client import parse_v1_predictions

    rows = [
        {"label": "food", "probabilities": dict(zip(CLASSES, [0.1, 0.7, 0.1, 0.1], strict=True)),
         "in_distribution_score": 4.0, "model_name": "clazzify", "model_version": "3"},
        {"label": "unknown", "probabilities": dict(zip(CLASSES, [0.2, 0.5, 0.2, 0.1], strict=True)),
         "in_distribution_score": -1.0, "model_name": "clazzify", "model_version": "3"},
    ]
    prediction = parse_v1_predictions({"predictions": rows}, 2)
    assert prediction.model_version == "3" and prediction.class_names == tuple(CLASSES)
    assert [prediction.verdict(i) for i in range(2)] == [(False, 4.0), (True, -1.0)]
    for row in rows:
        del row["in_distribution_score"]
        row["label"] = "food"
    assert parse_v1_predictions({"predictions": rows}, 2).unknown is None
    with pytest.raises(EndpointError, match="2 entries"):
        parse_v1_predictions({"predictions": rows[:1]}, 2)
