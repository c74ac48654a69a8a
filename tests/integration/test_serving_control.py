"""The control plane is closed, readiness tells the truth, and one request cannot decode
its way past the pod's memory: each played as an attacker holding a data-plane key."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import grpc
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub
from serving_support import (
    KEY,
    OTHER_KEY,
    Client,
    free_port,
    peak_rss_mb,
    png16,
    running_process,
    running_server,
    v1_body,
)

pytestmark = pytest.mark.integration

ADMIN_KEY = "admin-key-0123456789abcdefghij"
V1 = "/v1/models/clazzify:predict"
REST_CONTROL = [
    ("POST", "/v2/repository/models/clazzify/unload"),
    ("POST", "/v2/repository/models/clazzify/load"),
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/repository/models"),
]
GRPC_CONTROL = ["RepositoryModelUnload", "RepositoryModelLoad", "RepositoryIndex"]
_SERVICE = "/inference.GRPCInferenceService/"


@pytest.fixture(scope="module")
def photo(demo_dir: Path) -> bytes:
    return next(p for p in sorted(demo_dir.glob("*/*.jpg")) if "bad" not in p.name).read_bytes()


@pytest.fixture(scope="module")
def admin_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with data-plane keys KEY, OTHER_KEY and the admin key ADMIN_KEY."""
    work = tmp_path_factory.mktemp("control")
    (work / "admin-keys").write_text(f"# the control plane's own key\n{ADMIN_KEY}\n")
    grpc_port = free_port()
    args = ["--model-uri", str(tiny_bundle), "--grpc-port", str(grpc_port),
            "--admin-keys-file", str(work / "admin-keys")]
    with running_process(args, work / "server.log") as (port, proc):
        yield port, grpc_port, proc, work / "server.log"


def _grpc_call(port: int, method: str, request: bytes, key: str | None):
    """One raw unary call (any method name, implemented by KServe or not)."""
    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(_SERVICE + method)
            metadata = (("authorization", f"Bearer {key}"),) if key else ()
            return await call(request, metadata=metadata, timeout=30)

    try:
        return grpc.StatusCode.OK, asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        return e.code(), e.details()


def _grpc_request(method: str) -> bytes:
    if method == "RepositoryIndex":
        return b""  # KServe implements no index; the refusal comes first all the same
    cls = getattr(pb, f"{method}Request")
    return cls(model_name="clazzify").SerializeToString()


def _grpc_ready(port: int) -> tuple[bool, bool]:
    async def run():
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = GRPCInferenceServiceStub(channel)
            server = await stub.ServerReady(pb.ServerReadyRequest(), timeout=10)
            model = await stub.ModelReady(pb.ModelReadyRequest(name="clazzify"), timeout=10)
            return server.ready, model.ready

    return asyncio.run(run())


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_no_data_plane_key_can_index_load_or_unload_over_rest(admin_server, photo, key):
    port, *_ = admin_server
    client = Client(port, key=key)
    for method, path in REST_CONTROL:
        status, body = client.json(method, path)
        assert status == 403, (path, body)
        assert "data-plane key may not" in body["error"] and "--admin-keys-file" in body["error"]
    for bad in (None, "not-a-key-of-this-server-at-all"):
        status, _ = client.json("POST", REST_CONTROL[0][1], key=bad)
        assert status == 401
    assert client.request("GET", "/v2/health/ready")[0] == 200
    assert client.json("POST", V1, v1_body([photo]))[0] == 200  # the model is still served


@pytest.mark.parametrize("key", [KEY, OTHER_KEY])
def test_no_data_plane_key_can_index_load_or_unload_over_grpc(admin_server, key):
    _, grpc_port, *_ = admin_server
    for method in GRPC_CONTROL:
        code, details = _grpc_call(grpc_port, method, _grpc_request(method), key)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code, details)
        assert "data-plane key may not" in details
        code, _ = _grpc_call(grpc_port, method, _grpc_request(method), None)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert _grpc_ready(grpc_port) == (True, True)


def test_the_admin_key_is_no_data_plane_key(admin_server, photo):
    port, *_ = admin_server
    status, body = Client(port, key=ADMIN_KEY).json("POST", V1, v1_body([photo]))
    assert status == 401 and "invalid API key" in body["error"]


def test_readiness_turns_false_when_the_model_is_unloaded_and_back_on_load(admin_server, photo):
    port, grpc_port, _, _ = admin_server
    admin, user = Client(port, key=ADMIN_KEY), Client(port)
    for unload in ("rest", "grpc"):
        if unload == "rest":
            assert admin.json("POST", "/v2/repository/models/clazzify/unload")[0] == 200
        else:
            code, _ = _grpc_call(grpc_port, "RepositoryModelUnload",
                                 _grpc_request("RepositoryModelUnload"), ADMIN_KEY)
            assert code == grpc.StatusCode.OK
        assert user.request("GET", "/v2/health/ready", key=None)[0] == 503
        assert user.request("GET", "/v2/models/clazzify/ready", key=None)[0] == 503
        assert user.request("GET", "/v1/models/clazzify", key=None)[0] == 503
        assert _grpc_ready(grpc_port) == (False, False)
        # Liveness is the process, not the model: a probe must not restart a pod an admin
        # is reloading.
        status, body = user.json("GET", "/v2/health/live", key=None)
        assert status == 200 and body == {"live": True}
        status, body = user.json("POST", V1, v1_body([photo]))
        assert status == 503 and "not ready" in body["error"]

        if unload == "rest":
            status, body = admin.json("POST", "/v2/repository/models/clazzify/load")
            assert status == 200 and body["load"] is True
        else:
            code, _ = _grpc_call(grpc_port, "RepositoryModelLoad",
                                 _grpc_request("RepositoryModelLoad"), ADMIN_KEY)
            assert code == grpc.StatusCode.OK
        assert user.request("GET", "/v2/health/ready", key=None)[0] == 200
        assert _grpc_ready(grpc_port) == (True, True)
        assert user.json("POST", V1, v1_body([photo]))[0] == 200


def test_a_clients_4xx_is_one_warning_line_without_a_traceback(admin_server, photo):
    port, _, _, log = admin_server
    marker = "not-an-image-marker-7f3a"
    body = json.dumps({"instances": [{"b64": "bm90LWFuLWltYWdl"}], "id": marker}).encode()
    client = Client(port)
    for _ in range(3):
        assert client.request("POST", V1, body)[0] == 400
    assert client.json("POST", "/v1/models/no-such-model:predict", v1_body([photo]))[0] == 404
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    warnings = [line for line in text.splitlines() if "-> 400" in line and "not_an_image" in line]
    assert len(warnings) == 3 and all("WARNING" in line for line in warnings)
    assert any("-> 404" in line and "no-such-model" in line for line in text.splitlines())


def test_with_no_admin_keys_the_repository_is_refused_to_everyone(tiny_bundle, tmp_path):
    # --insecure: no key is needed for anything else, and still no one may unload.
    with running_server(["--model-uri", str(tiny_bundle), "--insecure"], tmp_path / "log",
                        keys=None) as port:
        client = Client(port, key=None)
        for key in (None, KEY, ADMIN_KEY):
            for method, path in REST_CONTROL:
                status, body = client.json(method, path, key=key)
                assert status == 403 and "is off on this server" in body["error"], (path, key)
        assert client.request("GET", "/v2/health/ready")[0] == 200


def _clear_peak(pid: int) -> float:
    """Reset the process's peak RSS where Linux allows it; return its RSS now (MiB)."""
    with contextlib.suppress(OSError):  # older kernels, other users: VmRSS still bounds it
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
def test_a_50mp_16bit_png_is_answered_in_bounded_memory_and_three_are_refused(admin_server):
    port, _, proc, _ = admin_server
    bomb = png16(7000, 7000)  # 49 MP, under the 50 MP per-image limit
    assert len(bomb) < 200_000
    client = Client(port, timeout=120)
    before = _clear_peak(proc.pid)
    status, body = client.json("POST", V1, v1_body([bomb]))
    growth = peak_rss_mb(proc.pid) - before
    assert status == 200 and body["predictions"][0]["label"], body
    # The whole-array float64 path grew by ~1,235 MiB for this image; uint8 at ~440.
    assert growth < 700, f"peak RSS grew by {growth:.0f} MiB decoding one 49 MP PNG"

    before = _clear_peak(proc.pid)
    status, body = client.json("POST", V1, v1_body([bomb] * 3))
    growth = peak_rss_mb(proc.pid) - before
    assert status == 400 and "100000000-pixel budget" in body["error"], body
    assert growth < 100, f"a refused request grew the peak RSS by {growth:.0f} MiB"
