"""The model server over real HTTP: round trips, auth, bad input, pixel and engine parity, fuzz."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_support import (
    KEY,
    OTHER_KEY,
    Client,
    b64,
    metric_value,
    running_server,
    v1_body,
    v2_binary,
    v2_body,
)

from clazzify.core.bundle import ONNX_FILE, load_predictor
from clazzify.serving.config import ServingLimits
from clazzify.serving.protocol import images_to_batch

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

V1 = "/v1/models/clazzify:predict"
V2 = "/v2/models/clazzify/infer"
SERVER_ARGS = ["--max-images", "4", "--max-pixels", "1000000", "--max-body-mb", "1",
               "--max-latency-ms", "2", "--model-version", "test-1"]


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_server(["--model-uri", str(tiny_bundle), *SERVER_ARGS], log) as port:
        client = Client(port)
        client.log_path = log
        yield client
        client.close()


@pytest.fixture(scope="module")
def photos(hdf5_dir: Path) -> list[tuple[bytes, np.ndarray]]:
    """(file bytes, the row training stored for it) for the test split's photos."""
    with h5py.File(hdf5_dir / "test.h5", "r") as f:
        uris = [u.decode() if isinstance(u, bytes) else u for u in f["uris"][:]]
        rows = f["images"][:]
    return [(Path(u).read_bytes(), row) for u, row in zip(uris, rows, strict=True)]


def _png(size: tuple[int, int], color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the access log


def test_access_log_keeps_refused_and_failed_requests_and_drops_answered_ones(server: Client,
                                                                             photos):
    """The default ``--access-log errors``: uvicorn's line for a 401 and a 400, none for a 200
    (every request is still counted in /metrics)."""
    status, _ = server.json("POST", f"{V1}?probe=answered", v1_body([photos[0][0]]))
    assert status == 200
    status, _ = server.json("POST", f"{V1}?probe=refused", v1_body([photos[0][0]]), key="wrong")
    assert status == 401
    status, _ = server.json("POST", f"{V1}?probe=bad", {"instances": []})
    assert status == 400
    status, metrics = server.request("GET", "/metrics")
    assert status == 200 and b"clazzify_requests_total" in metrics
    log = server.log_path.read_text(errors="replace")
    assert 'probe=refused HTTP/1.1" 401' in log
    assert 'probe=bad HTTP/1.1" 400' in log
    assert "probe=answered" not in log
    assert '"GET /metrics HTTP/1.1" 200' not in log


# --------------------------------------------------------------------------- round trips


def test_v1_round_trip(server: Client, photos, tiny_bundle: Path):
    images = [p for p, _ in photos[:3]]
    status, out = server.json("POST", V1, v1_body(images))
    assert status == 200, out
    classes = json.loads((tiny_bundle / "clazzify.json").read_text())["class_names"]
    assert len(out["predictions"]) == 3
    for pred in out["predictions"]:
        assert pred["label"] in classes
        assert list(pred["probabilities"]) == classes
        assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert pred["probability"] == max(pred["probabilities"].values())
        assert (pred["model_name"], pred["model_version"]) == ("clazzify", "test-1")


def test_v2_json_and_binary_round_trips_agree_with_v1(server: Client, photos):
    images = [p for p, _ in photos[:2]]
    _, v1 = server.json("POST", V1, v1_body(images))
    status, v2 = server.json("POST", V2, {"id": "req-7", **v2_body(images)})
    assert status == 200, v2
    body, headers = v2_binary(images)
    status, raw = server.request("POST", V2, body, headers=headers)
    assert status == 200, raw
    v2_bin = json.loads(raw)
    assert v2["id"] == "req-7" and v2["model_version"] == "test-1"
    for resp in (v2, v2_bin):
        outs = {o["name"]: o for o in resp["outputs"]}
        assert outs["label"]["data"] == [p["label"] for p in v1["predictions"]]
        probs = np.array(outs["probabilities"]["data"]).reshape(outs["probabilities"]["shape"])
        names = outs["class_names"]["data"]
        expected = [[p["probabilities"][c] for c in names] for p in v1["predictions"]]
        np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_metadata_and_health(server: Client, tiny_bundle: Path):
    status, meta = server.json("GET", "/v2/models/clazzify")
    assert status == 200
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    # every bundle trained now records an unknown rule, so the score is an output too
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities", "class_names", "in_distribution_score"}
    for path in ("/v2/health/live", "/v2/health/ready", "/v1/models/clazzify",
                 "/v2/models/clazzify/ready"):
        assert server.request("GET", path, key=None)[0] == 200, path
    assert server.json("POST", "/v1/models/nope:predict", v1_body([b"x"]))[0] == 404


# --------------------------------------------------------------------------- parity


def test_a_photo_reaches_the_model_as_the_pixels_training_stored(server: Client, photos,
                                                                   tiny_bundle: Path):
    files = [p for p, _ in photos]
    stored = np.stack([row for _, row in photos])
    # The server's decode path gives training's bytes-exact pixels...
    pixels = images_to_batch(files, stored.shape[1], ServingLimits())
    np.testing.assert_array_equal(pixels, stored)
    # ...and over HTTP the model answers exactly as it does on the stored rows.
    engine = load_predictor(tiny_bundle, "auto")  # the engine the server chose (int8 if it passed)
    for start in range(0, len(files), 4):
        status, out = server.json("POST", V1, v1_body(files[start : start + 4]))
        assert status == 200, out
        got = np.array([list(p["probabilities"].values()) for p in out["predictions"]])
        want = engine.predict(stored[start : start + 4])
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["openvino-int8", "onnx"])
def test_each_served_engine_answers_as_it_does_on_the_pixels_training_stored(
    engine: str, photos, tiny_bundle: Path, tmp_path: Path,
):
    """Training/serving parity for the int8 model too: a photo sent over HTTP to a server
    on ``engine`` gets what that engine gives on the row training stored."""
    files = [p for p, _ in photos[:8]]
    stored = np.stack([row for _, row in photos[:8]])
    with running_server(["--model-uri", str(tiny_bundle), "--engine", engine, *SERVER_ARGS],
                        tmp_path / "server.log") as port:
        client = Client(port)
        got = []
        for start in range(0, len(files), 4):
            status, out = client.json("POST", V1, v1_body(files[start : start + 4]))
            assert status == 200, out
            got += [list(p["probabilities"].values()) for p in out["predictions"]]
        client.close()
    want = load_predictor(tiny_bundle, engine).predict(stored)
    np.testing.assert_allclose(np.array(got), want, atol=1e-5)
    if engine == "openvino-int8":  # and it is the int8 model, not float32 under another name
        fp32 = load_predictor(tiny_bundle, "onnx").predict(stored)
        assert not np.allclose(want, fp32, atol=1e-6)


def test_onnx_and_keras_engines_agree_on_the_test_split(tiny_bundle: Path, hdf5_dir: Path):
    with h5py.File(hdf5_dir / "test.h5", "r") as f:
        images = f["images"][:]
    onnx = load_predictor(tiny_bundle, "onnx").predict(images)
    keras = load_predictor(tiny_bundle, "keras").predict(images)
    assert np.abs(onnx - keras).max() <= 1e-4


def test_openvino_engines_agree_with_onnx(tiny_bundle: Path, hdf5_dir: Path):
    pytest.importorskip("openvino")
    from clazzify.serving.engine import OpenVinoPredictor

    with h5py.File(hdf5_dir / "test.h5", "r") as f:
        images = f["images"][:]
    onnx = load_predictor(tiny_bundle, "onnx").predict(images)
    f32 = OpenVinoPredictor(tiny_bundle).predict(images)
    assert np.abs(onnx - f32).max() <= 1e-4
    bf16 = OpenVinoPredictor(tiny_bundle, precision="bf16").predict(images)
    assert np.abs(onnx - bf16).max() <= 0.05  # bfloat16 keeps ~3 significant digits
    top2 = np.sort(onnx, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.05  # a tie within bf16's error may flip either way
    assert (bf16.argmax(1) == onnx.argmax(1))[clear].all()


def test_keras_fallback_server_answers_like_the_onnx_one(server: Client, photos, tiny_bundle: Path,
                                                         tmp_path: Path):
    bundle = tmp_path / "keras-only"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / ONNX_FILE).unlink()  # --engine auto must fall back to Keras
    images = [p for p, _ in photos[:4]]
    _, onnx_out = server.json("POST", V1, v1_body(images))
    with running_server(["--model-uri", str(bundle)], tmp_path / "keras.log") as port:
        client = Client(port)
        status, keras_out = client.json("POST", V1, v1_body(images))
        metrics = client.request("GET", "/metrics")[1].decode()
        client.close()
    assert status == 200, keras_out
    assert metric_value(metrics, "clazzify_model_info", engine="keras") == 1.0
    for a, b in zip(onnx_out["predictions"], keras_out["predictions"], strict=True):
        diff = max(abs(a["probabilities"][c] - b["probabilities"][c]) for c in a["probabilities"])
        assert diff <= 1e-4


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("path", [V1, V2, "/v2/models/clazzify", "/v1/models"])
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": f"Basic {KEY}"},
     {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"}],
)
def test_requests_without_a_valid_key_get_401(server: Client, path, headers):
    method = "POST" if path in (V1, V2) else "GET"
    status, body = server.request(method, path, b"{}" if method == "POST" else None,
                                  headers=headers, key=None)
    assert status == 401, body
    assert b"API key" in body


def test_every_configured_key_is_accepted(server: Client, photos):
    for key in (KEY, OTHER_KEY):
        assert server.json("POST", V1, v1_body([photos[0][0]]), key=key)[0] == 200


@pytest.mark.parametrize("command", [["serving"], ["clazzify.cli", "serve"]])
def test_server_refuses_to_start_without_keys_unless_insecure(tiny_bundle: Path, command):
    env = {k: v for k, v in os.environ.items() if k != "CLAZZIFY_API_KEYS"}
    # `python -m serving` is the checkout's entry point: it runs from the repository root.
    proc = subprocess.run([sys.executable, "-m", *command, "--model-uri", str(tiny_bundle)],
                          env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode != 0
    assert "no API key configured" in proc.stderr and "--insecure" in proc.stderr
    usage = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True,
                           text=True, timeout=60, cwd=ROOT)
    assert usage.returncode == 0 and "--watch-alias" in usage.stdout


# --------------------------------------------------------------------------- bad input


def _bad_v1_cases(photo: bytes) -> list[tuple[str, bytes, str]]:
    jpeg = photo
    return [
        ("malformed JSON", b'{"instances": [', "Unrecognized request format"),  # KServe's own
        ("not an object", b"[1, 2, 3]", "expected a JSON object"),
        ("no instances", b'{"inputs": []}', "expected a JSON object"),
        ("empty instances", b'{"instances": []}', "is empty"),
        ("too many images", json.dumps(v1_body([jpeg] * 5)).encode(), "at most 4"),
        ("bad base64", b'{"instances": [{"b64": "%%%not-base64"}]}', "invalid base64"),
        ("wrong instance", b'{"instances": [[1, 2, 3]]}', "instances[0]"),
        ("non-image", json.dumps(v1_body([b"plain text, not an image"])).encode(), "not_an_image"),
        ("zero bytes", json.dumps(v1_body([b""])).encode(), "empty"),
        ("truncated", json.dumps(v1_body([_png((64, 64))[:60]])).encode(), "corrupt"),
        ("too many pixels", json.dumps(v1_body([_png((1200, 1000))])).encode(), "too_large"),
        ("too small", json.dumps(v1_body([_png((20, 64))])).encode(), "too_small"),
    ]


def test_every_bad_v1_input_gets_a_400_that_names_it(server: Client, photos):
    for name, body, message in _bad_v1_cases(photos[0][0]):
        status, out = server.request("POST", V1, body)
        assert status == 400, (name, out)
        assert message in json.loads(out)["error"], (name, out)


def test_every_bad_v2_input_gets_a_400_that_names_it(server: Client, photos):
    photo = photos[0][0]
    good_binary, headers = v2_binary([photo])
    cut_binary, cut_headers = v2_binary([photo[: len(photo) // 2]])
    cases = [
        ("malformed JSON", b'{"inputs": [', {}, "malformed JSON"),
        ("no inputs", b'{"instances": []}', {}, "expected a JSON object"),
        ("pixel tensor", json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "UINT8",
                                                  "data": [1, 2]}]}).encode(), {}, "BYTES"),
        ("shape mismatch", json.dumps({"inputs": [{"name": "image", "shape": [3],
                                                    "datatype": "BYTES", "data": [b64(photo)]}]}
                                      ).encode(), {}, "shape says 3"),
        ("bad base64", json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                               "data": ["@@@"]}]}).encode(), {}, "invalid base64"),
        ("non-image", json.dumps(v2_body([b"nope"])).encode(), {}, "not_an_image"),
        ("bad header length", good_binary,
         {**headers, "inference-header-content-length": "x1"}, "must be an integer"),
        ("header past body", good_binary,
         {**headers, "inference-header-content-length": "999999"}, "outside"),
        ("binary cut short", good_binary[:-10], headers, "only"),
        ("truncated binary image", cut_binary, cut_headers, "corrupt"),
    ]
    for name, body, hdrs, message in cases:
        status, out = server.request("POST", V2, body, headers=hdrs)
        assert status == 400, (name, out)
        assert message in json.loads(out)["error"], (name, out)


def test_bodies_over_the_limit_get_413_even_when_chunked(server: Client):
    big = b'{"instances": [{"b64": "' + b"A" * (1024 * 1024 + 10) + b'"}]}'
    status, out = server.request("POST", V1, big)
    assert status == 413 and b"limit" in out
    chunks = [b"A" * 65536] * 20  # no Content-Length: http.client sends it chunked
    status, out = server.request("POST", V1, chunks)
    assert status == 413


# --------------------------------------------------------------------------- metrics


def test_metrics_count_requests_batches_labels_and_version(server: Client, photos):
    server.json("POST", V1, v1_body([photos[0][0]]))
    server.request("POST", V1, b"{", key=None)
    status, text = server.request("GET", "/metrics", key=None)
    assert status == 200
    text = text.decode()
    assert metric_value(text, "clazzify_requests_total", route="v1_predict", status="200") >= 1
    assert metric_value(text, "clazzify_requests_total", route="v1_predict", status="401") >= 1
    assert metric_value(text, "clazzify_request_seconds_count", route="v1_predict") >= 2
    assert metric_value(text, "clazzify_batch_size_count") >= 1
    assert sum(v for line in text.splitlines() if line.startswith("clazzify_predictions_total{")
               for v in [float(line.rsplit(" ", 1)[1])]) >= 1
    assert metric_value(text, "clazzify_model_info", version="test-1", engine="onnx") == 1.0


# --------------------------------------------------------------------------- fuzz


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for op, pos, val in ops:
        if not buf:
            break
        i = pos % len(buf)
        if op == "flip":
            buf[i] ^= 1 << (val % 8)
        elif op == "set":
            buf[i] = val % 256
        elif op == "cut":
            del buf[i:]
        elif op == "insert":
            buf[i:i] = bytes([val % 256]) * (1 + val % 64)
    return bytes(buf)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["instances", "inputs", "b64", "data", "shape", "datatype", "name",
                         "parameters", "binary_data_size", "x"]), inner, max_size=4),
    max_leaves=12,
)
_mutations = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "insert"]),
                                st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6)


@st.composite
def _payloads(draw, photo: bytes):
    kind = draw(st.sampled_from(["raw", "json", "v1_image", "v2_image", "v2_binary", "v1_b64"]))
    if kind == "raw":
        return V1 if draw(st.booleans()) else V2, draw(st.binary(max_size=512)), {}
    if kind == "json":
        return draw(st.sampled_from([V1, V2])), json.dumps(draw(_json_values)).encode(), {}
    image = _mutate(photo, draw(_mutations))
    if kind == "v1_image":
        return V1, json.dumps(v1_body([image])).encode(), {}
    if kind == "v2_image":
        return V2, json.dumps(v2_body([image])).encode(), {}
    if kind == "v1_b64":
        text = _mutate(base64.b64encode(photo), draw(_mutations)).decode("latin-1")
        return V1, json.dumps({"instances": [{"b64": text}]}).encode(), {}
    body, headers = v2_binary([image])
    body = _mutate(body, draw(_mutations)) if draw(st.booleans()) else body
    header = draw(st.one_of(st.just(headers["inference-header-content-length"]),
                            st.integers(-5, len(body) + 5).map(str), st.text(max_size=6)))
    headers = {**headers, "inference-header-content-length": header}
    return V2, body, headers


def test_fuzzed_payloads_never_cause_a_5xx(server: Client, photos):
    photo = photos[0][0]
    statuses: list[int] = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data):
        path, body, headers = data.draw(_payloads(photo))
        headers = {k: v for k, v in headers.items()
                   if v.isascii() and v.isprintable() and "\r" not in v and "\n" not in v}
        status, out = server.request("POST", path, body, headers=headers)
        statuses.append(status)
        assert status < 500, (path, body[:200], headers, out[:300])

    check()
    assert len(statuses) >= 300
    assert server.request("GET", "/v2/health/ready", key=None)[0] == 200
    assert server.json("POST", V1, v1_body([photo]))[0] == 200
