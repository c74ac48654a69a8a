"""The serving logic: payload parsing, the pixel path, answers, authentication, URIs."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from clazzify.core.errors import ClazzifyError, ConfigError
from clazzify.core.imaging import ImageLimits, image_to_array
from clazzify.serving.auth import bearer_token, is_open_path, key_matches, load_api_keys, route_label
from clazzify.serving.config import ServerConfig, ServingLimits, parse_model_uri
from clazzify.serving.protocol import (
    PayloadError,
    check_probabilities,
    decode_b64,
    images_to_batch,
    parse_v2_body,
    v1_images,
    v1_predictions,
    v2_images,
    v2_metadata,
    v2_outputs,
)

pytestmark = pytest.mark.unit

LIMITS = ServingLimits(max_images=4)
KEY = "k" * 24


def _encode(fmt: str = "JPEG", size: tuple[int, int] = (48, 40), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _pack(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


# --------------------------------------------------------------------------- V1


def test_v1_images_decodes_every_instance():
    a, b = _encode(seed=1), _encode("PNG", seed=2)
    body = {"instances": [{"b64": _b64(a)}, {"b64": _b64(b)}]}
    assert v1_images(body, LIMITS) == [a, b]


def test_v1_images_parses_raw_json_bytes():
    a = _encode()
    assert v1_images(f'{{"instances": [{{"b64": "{_b64(a)}"}}]}}'.encode(), LIMITS) == [a]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"{not json", "malformed JSON"),
        ([1, 2], "expected a JSON object"),
        ({"inputs": []}, "expected a JSON object"),
        ({"instances": "x"}, "must be a list"),
        ({"instances": []}, "is empty"),
        ({"instances": [{"b64": "QUFB"}] * 5}, "at most 4"),
        ({"instances": [[1, 2, 3]]}, "instances[0]"),
        ({"instances": [{"b64": 42}]}, "expected a base64 string"),
        ({"instances": [{"b64": "not base64!"}]}, "invalid base64"),
        ({"instances": [{"b64": "QUF"}]}, "invalid base64"),
        ({"instances": [{"b64": "QUFB\u00e9"}]}, "invalid base64"),
    ],
)
def test_v1_images_rejects_bad_bodies_with_a_named_problem(body, message):
    with pytest.raises(PayloadError, match=message.replace("[", r"\[").replace("]", r"\]")):
        v1_images(body, LIMITS)


def test_decode_b64_is_strict_and_exact():
    assert decode_b64(_b64(b"\x00\xffabc"), "x") == b"\x00\xffabc"
    with pytest.raises(PayloadError, match="where"):
        decode_b64("YWJj\n", "where")


# --------------------------------------------------------------------------- V2


def test_v2_json_body_with_base64_strings():
    a = _encode()
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [_b64(a)]}]}
    req = parse_v2_body(json.dumps(body).encode(), None)
    assert v2_images(req["inputs"], LIMITS) == [a]


def test_v2_binary_extension_carries_raw_bytes():
    a, b = _encode(seed=3), _encode("WEBP", seed=4)
    raw = _pack(a, b)
    header = (
        '{"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", '
        f'"parameters": {{"binary_data_size": {len(raw)}}}}}]}}'
    ).encode()
    req = parse_v2_body(header + raw, str(len(header)))
    assert v2_images(req["inputs"], LIMITS) == [a, b]


def test_v2_nested_data_for_shape_n_by_1():
    a = _encode()
    data = [[_b64(a)], [_b64(a)]]
    inputs = [{"name": "image", "shape": [2, 1], "datatype": "BYTES", "data": data}]
    assert v2_images(inputs, LIMITS) == [a, a]


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{}", None, "expected a JSON object"),
        (b'{"inputs": 3}', None, "expected a JSON object"),
        (b'{"inputs": [3]}', None, "must be an object"),
        (b"{}", "abc", "must be an integer"),
        (b"{}", "99", "outside"),
        (b'{"inputs": []}', "0", "outside"),
        (b'{"inputs": [{"parameters": {"binary_data_size": 4}}]}', None, "header is missing"),
    ],
)
def test_parse_v2_body_rejects_bad_bodies(body, header, message):
    with pytest.raises(PayloadError, match=message):
        parse_v2_body(body, header)


def _v2_header(datatype: str, size: int) -> bytes:
    params = {"binary_data_size": size}
    inp = {"name": "i", "shape": [1], "datatype": datatype, "parameters": params}
    return json.dumps({"inputs": [inp]}).encode()


def test_parse_v2_body_rejects_binary_sizes_that_do_not_add_up():
    header = _v2_header("BYTES", 50)
    with pytest.raises(PayloadError, match="only 8 follow"):
        parse_v2_body(header + _pack(b"abcd"), str(len(header)))
    header = _v2_header("FP32", 8)
    with pytest.raises(PayloadError, match="only BYTES"):
        parse_v2_body(header + _pack(b"abcd"), str(len(header)))


def test_parse_v2_body_rejects_a_bytes_tensor_whose_lengths_run_past_its_end():
    bad = struct.pack("<I", 9) + b"abc"
    header = _v2_header("BYTES", len(bad))
    with pytest.raises(PayloadError, match=r"inputs\[0\]: element of 9 bytes .* runs past"):
        parse_v2_body(header + bad, str(len(header)))


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([], "exactly one input"),
        ([{"datatype": "UINT8", "shape": [1], "data": [1]}], "pixel tensors are not accepted"),
        ([{"datatype": "BYTES", "shape": [1], "data": "x"}], "must be a list"),
        ([{"datatype": "BYTES", "shape": [2], "data": ["QUFB"]}], "shape says 2"),
        ([{"datatype": "BYTES", "shape": [1, 2], "data": ["QUFB"]}], "shape must be"),
        ([{"datatype": "BYTES", "shape": "1", "data": ["QUFB"]}], "shape must be"),
        ([{"datatype": "BYTES", "shape": [0], "data": []}], "is empty"),
        ([{"datatype": "BYTES", "shape": [5], "data": ["QUFB"] * 5}], "at most 4"),
        ([{"datatype": "BYTES", "shape": [1], "data": [7]}], "expected a base64 string"),
    ],
)
def test_v2_images_rejects_bad_inputs(inputs, message):
    with pytest.raises(PayloadError, match=message):
        v2_images(inputs, LIMITS)


# --------------------------------------------------------------------------- pixels


def test_images_to_batch_is_the_training_decode_path():
    blobs = [_encode("JPEG", (64, 48), 5), _encode("PNG", (40, 90), 6)]
    batch = images_to_batch(blobs, 32, LIMITS)
    assert batch.dtype == np.uint8 and batch.shape == (2, 32, 32, 3)
    for row, blob in zip(batch, blobs, strict=True):
        np.testing.assert_array_equal(row, image_to_array(blob, 32, LIMITS.image_limits))


def test_a_request_over_its_pixel_budget_is_refused_before_decoding():
    limits = ServingLimits(max_images=4, max_request_pixels=2 * 64 * 64)
    png = _encode("PNG", (64, 64))
    assert images_to_batch([png, png], 32, limits).shape == (2, 32, 32, 3)  # exactly the budget
    # The third image's header is read, and it tips the sum: nothing is decoded. A corrupt
    # body behind a valid header proves it (decoding it would say "corrupt").
    truncated = _encode("PNG", (64, 64), seed=3)[:200]
    with pytest.raises(PayloadError, match=r"too_large: images 0\.\.2 .* 8192-pixel budget"):
        images_to_batch([png, png, truncated], 32, limits)


def test_a_jpeg_counts_at_the_scale_it_is_decoded_at():
    # 256x256 drafted for 32 px decodes at 1/8: 32*32 pixels, well inside a 64*64 budget.
    limits = ServingLimits(max_images=4, max_request_pixels=64 * 64)
    assert images_to_batch([_encode("JPEG", (256, 256))], 32, limits).shape == (1, 32, 32, 3)
    with pytest.raises(PayloadError, match="budget"):
        images_to_batch([_encode("PNG", (256, 256))], 32, limits)


def test_the_pixel_budget_must_admit_one_image():
    with pytest.raises(ConfigError, match="max-request-pixels"):
        ServingLimits(max_request_pixels=100)


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not_an_image"),
        (_encode("PNG", (64, 64))[:200], "corrupt"),
        (_encode("JPEG", (16, 64)), "too_small"),
    ],
)
def test_images_to_batch_names_the_bad_image(blob, reason):
    with pytest.raises(PayloadError, match=f"image 1: {reason}"):
        images_to_batch([_encode(), blob], 32, LIMITS)


def test_images_to_batch_refuses_decompression_bombs_before_decoding():
    limits = ServingLimits(image_limits=ImageLimits(max_pixels=100 * 100))
    with pytest.raises(PayloadError, match="too_large"):
        images_to_batch([_encode("PNG", (200, 200))], 32, limits)


# --------------------------------------------------------------------------- answers


def test_v1_predictions_top_label_and_every_probability():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    out = v1_predictions(probs, ["a", "b", "c"], "clazzify", "3")
    assert [p["label"] for p in out] == ["b", "a"]
    assert out[0]["probability"] == pytest.approx(0.7)
    assert out[1]["probabilities"] == pytest.approx({"a": 0.5, "b": 0.25, "c": 0.25})
    assert {(p["model_name"], p["model_version"]) for p in out} == {("clazzify", "3")}


def test_v2_outputs_and_metadata_agree():
    probs = np.array([[0.1, 0.9], [0.6, 0.4], [0.3, 0.7]], dtype=np.float32)
    outputs = v2_outputs(probs, ["x", "y"])
    by_name = {o["name"]: o for o in outputs}
    assert by_name["label"]["data"] == ["y", "x", "y"]
    assert by_name["probabilities"]["shape"] == [3, 2]
    np.testing.assert_allclose(by_name["probabilities"]["data"], probs.reshape(-1))
    assert by_name["class_names"]["data"] == ["x", "y"]
    _, meta_out = v2_metadata(["x", "y"])
    assert [o["name"] for o in meta_out][:3] == [o["name"] for o in outputs]  # no score: no fourth tensor
    scored = v2_outputs(probs, ["x", "y"], ["y", "unknown", "y"], np.array([2.0, -1.0, 3.0]))
    assert [o["name"] for o in meta_out] == [o["name"] for o in scored]
    by_name = {o["name"]: o for o in scored}
    assert by_name["label"]["data"] == ["y", "unknown", "y"]
    assert by_name["in_distribution_score"] == {"name": "in_distribution_score", "datatype": "FP32", "shape": [3],
                                                "data": [2.0, -1.0, 3.0]}


def test_v1_predictions_carry_the_unknown_label_and_score():
    probs = np.array([[0.1, 0.9], [0.6, 0.4]], dtype=np.float32)
    out = v1_predictions(probs, ["x", "y"], "clazzify", "3", ["y", "unknown"], np.array([0.9, 0.2]))
    assert [p["label"] for p in out] == ["y", "unknown"]
    assert [p["in_distribution_score"] for p in out] == pytest.approx([0.9, 0.2])
    assert out[1]["probabilities"] == pytest.approx({"x": 0.6, "y": 0.4})  # classes only, as before
    assert "in_distribution_score" not in v1_predictions(probs, ["x", "y"], "clazzify", "3")[0]


def test_check_probabilities_flags_a_broken_model():
    good = check_probabilities(np.full((2, 3), 1 / 3), 2, "abc")
    assert good.dtype == np.float32
    with pytest.raises(ClazzifyError, match="does not match"):
        check_probabilities(np.zeros((2, 4)), 2, "abc")
    with pytest.raises(ClazzifyError, match="non-finite"):
        check_probabilities(np.array([[np.nan, 0, 1]]), 1, "abc")


# --------------------------------------------------------------------------- auth


def test_load_api_keys_from_file_and_env():
    text = f"# rotated monthly\n{'a' * 20}\n\n{'b' * 20}  # old key, retire soon\n"
    keys = load_api_keys(text, f"{'c' * 20},{'a' * 20}")
    assert keys == {"a" * 20, "b" * 20, "c" * 20}
    assert load_api_keys(None, None) == frozenset()
    with pytest.raises(ConfigError, match="too short"):
        load_api_keys("short")


def test_bearer_token_parsing():
    assert bearer_token(f"Bearer {KEY}") == KEY
    assert bearer_token(f"bearer   {KEY} ") == KEY
    for bad in (None, "", "Bearer", "Bearer ", f"Basic {KEY}", KEY):
        assert bearer_token(bad) is None


def test_key_matches_any_active_key_only():
    keys = {KEY, "z" * 30}
    assert key_matches(KEY, keys) and key_matches("z" * 30, keys)
    assert not key_matches(KEY[:-1], keys)
    assert not key_matches(None, keys)
    assert not key_matches("", keys | {""})
    assert not key_matches(KEY, set())


@pytest.mark.parametrize(
    ("method", "path", "open_"),
    [
        ("GET", "/", True),
        ("GET", "/v2/health/live", True),
        ("GET", "/v2/health/ready", True),
        ("GET", "/v1/models/clazzify", True),
        ("GET", "/v2/models/clazzify/ready", True),
        ("GET", "/metrics", True),
        ("POST", "/v1/models/clazzify:predict", False),
        ("GET", "/v1/models/clazzify:predict", False),
        ("POST", "/v2/models/clazzify/infer", False),
        ("GET", "/v2/models/clazzify", False),
        ("GET", "/v2", False),
        ("POST", "/v2/health/ready", False),
        ("GET", "/v2/health/ready/../../models/x/infer", False),
    ],
)
def test_only_health_and_metrics_are_open(method, path, open_):
    assert is_open_path(method, path) is open_


def test_route_labels_are_bounded():
    assert route_label("POST", "/v1/models/m:predict") == "v1_predict"
    assert route_label("POST", "/v2/models/m/infer") == "v2_infer"
    assert route_label("GET", "/v2/health/ready") == "health"
    assert route_label("GET", "/metrics") == "metrics"
    assert route_label("GET", "/v2/models/m") == "metadata"
    assert route_label("GET", "/random/path/123") == "other"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("uri", "kind", "name", "alias", "version"),
    [
        ("models:/clazzify@champion", "alias", "clazzify", "champion", None),
        ("models:/clazzify/7", "version", "clazzify", None, "7"),
        ("runs:/0123abcd/model", "run", None, None, None),
        ("s3://models/clazzify/v3", "s3", None, None, None),
        ("/mnt/models", "local", None, None, None),
        ("file:///tmp/bundle", "local", None, None, None),
        ("relative/bundle", "local", None, None, None),
    ],
)
def test_parse_model_uri(uri, kind, name, alias, version):
    src = parse_model_uri(uri)
    assert (src.kind, src.registered_name, src.alias, src.version) == (kind, name, alias, version)


@pytest.mark.parametrize(
    "uri", ["", "models:/clazzify", "models:/clazzify/latest", "models:/@x", "runs:/abc", "s3://", "gs://b/x"]
)
def test_parse_model_uri_rejects(uri):
    with pytest.raises(ConfigError):
        parse_model_uri(uri)


def test_serve_config_validates():
    assert ServerConfig(model_uri="/mnt/models").engine == "auto"
    ServerConfig(model_uri="models:/m@champion", watch_interval_s=5)
    for kwargs, message in [
        ({"model_name": "a/b"}, "URL-safe"),
        ({"engine": "tensorrt"}, "unknown engine"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_latency_ms": -1}, "max_latency_ms"),
        ({"http_port": 0}, "http_port"),
        ({"model_uri": "/mnt/models", "watch_interval_s": 5}, "needs a models:/NAME@ALIAS"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServerConfig(**kwargs)
    with pytest.raises(ConfigError, match="max_images"):
        ServingLimits(max_images=0)


def test_the_decoding_budget_admits_every_request_within_its_own():
    with pytest.raises(ConfigError, match="--max-decoding-pixels"):
        ServingLimits(max_request_pixels=10_000, max_decoding_pixels=5_000)
