"""KServe's conventions, checked with KServe's own clients: the ModelServer's underscore
flags, V1 and V2 over REST (InferenceRESTClient) and V2 over gRPC (InferenceGRPCClient) with
the same API keys and limits, each answering what the others answer."""

from __future__ import annotations

import asyncio
import base64
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
    return [p.read_bytes() for p in sorted(demo_dir.glob("*/*.jpg")) if "bad" not in p.name][:3]


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
