"""KServe's conventions, checked with KServe's own clients: the ModelServer's underscore
flags, V1 and V2 over REST (InferenceRESTClient) and V2 over gRPC (InferenceGRPCClient) with
the same API keys and limits, each answering what the others answer."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from serving_support import KEY, Client, free_port, metric_value, running_server

pytestmark = pytest.mark.integration

VERSION = "kserve-7"
AUTH = {"Authorization": f"Bearer {KEY}"}
GRPC_AUTH = (("authorization", f"Bearer {KEY}"),)


@pytest.fixture(scope="module")
def ports(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    grpc_port = free_port()
    log = tmp_path_factory.mktemp("kserve") / "server.log"
    # KServe's spelling of the flags, and ModelServer arguments clazzify passes through.
    args = ["--model-uri", str(tiny_bundle), "--model_name", "clazzify", "--grpc_port",
            str(grpc_port), "--workers", "1", "--max_threads", "2", "--model-version", VERSION,
            "--max-images", "4", "--max-body-mb", "1"]
    with running_server(args, log) as http_port:
        yield http_port, grpc_port


@pytest.fixture(scope="module")
def photos(demo_dir: Path) -> list[bytes]:
    """One photo of each of three classes."""
    folders = sorted(d for d in demo_dir.iterdir() if d.is_dir())[:3]
    return [next(p for p in sorted(d.glob("*.jpg")) if "bad" not in p.name).read_bytes()
            for d in folders]


@pytest.fixture(scope="module")
def v1_answer(ports, photos) -> list[dict]:
    """The reference: the server's V1 JSON answer for ``photos`` (labels, probabilities)."""
    status, body = Client(ports[0]).json("POST", "/v1/models/clazzify:predict", {
        "instances": [{"b64": base64.b64encode(p).decode()} for p in photos]})
    assert status == 200, body
    return body["predictions"]


def _request(photos: list[bytes], as_base64: bool) -> InferRequest:
    data = [base64.b64encode(p).decode() for p in photos] if as_base64 else list(photos)
    return InferRequest(model_name="clazzify", request_id="r1",
                        infer_inputs=[InferInput("image", [len(photos)], "BYTES", data)])


def _probabilities(response) -> np.ndarray:
    out = {o.name: o for o in response.outputs}
    return np.asarray(out["probabilities"].as_numpy(), dtype=np.float32)


def test_rest_v1_and_v2_answer_kserves_rest_client(ports, photos):
    http_port, _ = ports
    base = f"http://127.0.0.1:{http_port}"

    async def run():
        v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
        v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        try:
            instances = {"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}
            a = await v1.infer(base, instances, model_name="clazzify", headers=AUTH)
            b = await v2.infer(base, _request(photos, as_base64=True), model_name="clazzify",
                               headers=dict(AUTH))
            return a, b
        finally:
            await v1.close()
            await v2.close()

    v1_answer, v2_answer = asyncio.run(run())
    v1_probs = np.array([[row["probabilities"][c] for c in sorted(row["probabilities"])]
                         for row in v1_answer["predictions"]])
    assert [row["model_version"] for row in v1_answer["predictions"]] == [VERSION] * 3
    # InferResponse.from_bytes (kserve 0.21) drops model_version; the JSON carries it
    # (test_version_on_cluster reads it), gRPC's from_grpc keeps it (checked below).
    assert v2_answer.id == "r1" and v2_answer.model_name == "clazzify"
    np.testing.assert_allclose(_probabilities(v2_answer).reshape(3, -1), v1_probs, atol=1e-6)


def test_grpc_v2_answers_kserves_grpc_client_like_rest(ports, photos):
    http_port, grpc_port = ports
    rest = Client(http_port)
    status, body = rest.json("POST", "/v1/models/clazzify:predict",
                             {"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]})
    assert status == 200

    async def run():
        async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
            ready = await client.is_server_ready()  # health needs no key, as over REST
            raw = await client.infer(_request(photos, as_base64=False), headers=GRPC_AUTH)
            return ready, raw

    ready, answer = asyncio.run(run())
    assert ready and answer.model_version == VERSION
    names = [n.decode() if isinstance(n, bytes) else n
             for n in {o.name: o for o in answer.outputs}["class_names"].data]
    v1_probs = np.array([[row["probabilities"][c] for c in names] for row in body["predictions"]])
    np.testing.assert_allclose(_probabilities(answer).reshape(3, -1), v1_probs, atol=1e-6)
    text = rest.request("GET", "/metrics")[1].decode()
    assert metric_value(text, "clazzify_requests_total", route="grpc_infer", status="0") >= 1


@pytest.mark.parametrize(("headers", "code", "words"), [
    ((), grpc.StatusCode.UNAUTHENTICATED, "missing API key"),
    ((("authorization", "Bearer not-a-key-of-this-server"),), grpc.StatusCode.UNAUTHENTICATED,
     "invalid API key"),
])
def test_grpc_calls_without_a_valid_key_are_refused(ports, photos, headers, code, words):
    _, grpc_port = ports
    assert _grpc_error(grpc_port, _request(photos[:1], False), headers) == (code, words)


def test_grpc_enforces_the_rest_limits(ports, photos):
    _, grpc_port = ports
    code, details = _grpc_error(grpc_port, _request(photos * 2, False), GRPC_AUTH, words=None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "4" in details  # --max-images 4
    big = InferRequest(model_name="clazzify", infer_inputs=[
        InferInput("image", [1], "BYTES", [b"\0" * (2 * 1024 * 1024)])])
    code, _ = _grpc_error(grpc_port, big, GRPC_AUTH, words=None)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED  # --max-body-mb 1


def _grpc_error(port: int, request: InferRequest, headers, words: str | None = "") -> tuple:
    async def run():
        async with InferenceGRPCClient(f"127.0.0.1:{port}", retries=0) as client:
            await client.infer(request, headers=headers)

    with pytest.raises(grpc.RpcError) as caught:
        asyncio.run(run())
    error = caught.value
    details = error.details() or ""
    if words is None:
        return error.code(), details
    return error.code(), next((w for w in ("missing API key", "invalid API key") if w in details),
                              details)


# --------------------------------------------------------------------------- every client form
#
# Each form as KServe's documentation and examples build it: InferInput + InferRequest, sent
# by InferenceRESTClient(RESTConfig(protocol=...)) or InferenceGRPCClient, with
# set_data_from_numpy(..., binary_data=True) for bytes that are not UTF-8.


def _documented_input(photos: list[bytes], binary: bool) -> InferInput:
    if binary:
        infer_input = InferInput(name="image", shape=[len(photos)], datatype="BYTES")
        infer_input.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=True)
        return infer_input
    # Without binary data, REST carries JSON strings (base64) and gRPC bytes_contents (as
    # KServe's custom_model/test_client.py builds it: data=[image bytes]).
    return InferInput(name="image", shape=[len(photos)], datatype="BYTES", data=photos)


def _labels(response) -> list[str]:
    out = {o.name: o for o in response.outputs}
    return [v.decode() if isinstance(v, bytes) else v for v in out["label"].as_numpy().tolist()]


async def _rest(http_port: int, protocol: str, photos: list[bytes], binary: bool):
    client = InferenceRESTClient(RESTConfig(protocol=protocol, retries=0))
    try:
        if protocol == "v1":
            body = {"instances": [{"b64": base64.b64encode(p).decode()} for p in photos]}
            return await client.infer(f"http://127.0.0.1:{http_port}", body,
                                      model_name="clazzify", headers=dict(AUTH))
        if binary:
            infer_input = _documented_input(photos, binary=True)
        else:
            b64 = [base64.b64encode(p).decode() for p in photos]
            infer_input = InferInput(name="image", shape=[len(photos)], datatype="BYTES")
            infer_input.set_data_from_numpy(np.array(b64, dtype=np.object_), binary_data=False)
        request = InferRequest(model_name="clazzify", infer_inputs=[infer_input])
        return await client.infer(f"http://127.0.0.1:{http_port}", request,
                                  model_name="clazzify", headers=dict(AUTH))
    finally:
        await client.close()


async def _grpc(grpc_port: int, photos: list[bytes], binary: bool):
    async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
        request = InferRequest(model_name="clazzify",
                               infer_inputs=[_documented_input(photos, binary)])
        return await client.infer(infer_request=request, headers=GRPC_AUTH)


@pytest.mark.parametrize(("client", "binary"), [
    ("rest-v1", False), ("rest-v2", False), ("rest-v2", True), ("grpc", False), ("grpc", True),
])
def test_every_kserve_client_form_gets_the_right_labels(ports, photos, v1_answer, client, binary):
    http_port, grpc_port = ports
    if client == "grpc":
        answer = asyncio.run(_grpc(grpc_port, photos, binary))
    else:
        answer = asyncio.run(_rest(http_port, client.removeprefix("rest-"), photos, binary))
    want = [row["label"] for row in v1_answer]
    if client == "rest-v1":
        assert [row["label"] for row in answer["predictions"]] == want
        return
    assert _labels(answer) == want
    names = [n.decode() if isinstance(n, bytes) else n
             for n in {o.name: o for o in answer.outputs}["class_names"].as_numpy().tolist()]
    v1_probs = np.array([[row["probabilities"][c] for c in names] for row in v1_answer])
    np.testing.assert_allclose(_probabilities(answer).reshape(len(photos), -1), v1_probs,
                               atol=1e-6)


def test_a_raw_grpc_tensor_whose_lengths_do_not_add_up_is_invalid_argument(ports, photos):
    _, grpc_port = ports
    infer_input = InferInput(name="image", shape=[1], datatype="BYTES")
    infer_input.set_data_from_numpy(np.array(photos[:1], dtype=np.object_), binary_data=True)
    infer_input._raw_data = infer_input._raw_data[:-10] + (10**6).to_bytes(4, "little")
    code, details = _grpc_error(grpc_port, InferRequest(model_name="clazzify",
                                                        infer_inputs=[infer_input]),
                                GRPC_AUTH, words=None)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw_input_contents" in details


def _doc_block(marker: str) -> str:
    """The fenced block after ``marker`` in docs/serving.md, dedented."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    after = text[text.index(marker):]
    start = after.index("```python") + len("```python")
    return textwrap.dedent(after[start:after.index("```", start)])


def test_the_grpc_script_in_docs_runs_as_written(ports, photos, v1_answer, tmp_path):
    _, grpc_port = ports
    script = tmp_path / "grpc_client.py"
    script.write_text(_doc_block("grpc-client-script"))
    paths = []
    for i, photo in enumerate(photos):
        paths.append(tmp_path / f"photo-{i}.jpg")
        paths[-1].write_bytes(photo)
    env = {**os.environ, "CLAZZIFY_API_KEY": KEY, "CLAZZIFY_GRPC": f"127.0.0.1:{grpc_port}"}
    proc = subprocess.run([sys.executable, str(script), *map(str, paths)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = [line.rsplit(" ", 1)[1] for line in proc.stdout.splitlines()]
    assert got == [row["label"] for row in v1_answer]
