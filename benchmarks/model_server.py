"""Serving throughput and latency: the server next to the engine limits and decode, in one run.

    python benchmarks/model_server.py --bundle BUNDLE_DIR [--photos DIR] [--seconds 3]
        [--concurrency 1,8,32] [--servers auto:4,onnx:4] [--systems clazzify]

Same model (a trained bundle, or an untrained ``--architecture`` when no ``--bundle``;
speed does not depend on the weights), same real photos, same machine, one run:

- engines in-process on decoded pixels, per batch size, each with its defaults and as the
  server runs it: ``onnx`` float32 (ONNX Runtime's defaults, every core and spinning
  threads, at batch 1 is the issue's reference; served: one non-spinning thread per
  core), ``openvino-int8`` (the bundle's int8 model, NNCF's; served: one single-threaded
  stream per core, called from as many threads), and on request ``openvino-nncf`` (NNCF's
  OpenVINO-IR quantization of the float32 model);
- the request path's pieces, per image: JSON + base64 parsing of a V1 body, decoding
  (``image_to_array``), and a decode + engine pipeline in one process (decode threads
  feeding one engine thread) for each engine thread / spinning setting: where the time
  between the engine limit and the server goes;
- servers: ``python -m serving`` (KServe V1, base64 JPEG, API key, adaptive batching), one
  per ``--servers`` entry ``ENGINE:MAX_BATCH``; optionally the first one over V2 REST with
  the binary extension (raw JPEG bytes, no base64) and over its gRPC port, the original
  Flask design and ``mlflow models serve`` (``--systems``).

The machine is shared, so every cell is measured once per round, the rounds interleaved,
and each cell reports its best round; the load average is recorded before and after.
Prints a Markdown table and the target ratios, and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import PHOTOS, build_bundle, free_port, log, stop

ROOT = Path(__file__).resolve().parents[1]
KEY = "benchmark-key-0123456789abcdef"
SIZES = ROOT / "benchmarks" / "results" / "serving_sizes.json"
# A git worktree sits one level deeper than the main checkout; look beside both.
PHOTOS = PHOTOS if PHOTOS.is_dir() else Path("/work/shared/datasets/restaurant-photos")


def load_grpc(port: int, photos: Sequence[bytes], concurrency: int, seconds: float,
              warmup: float) -> dict:
    """``concurrency`` closed-loop V2 gRPC clients (ModelInfer, one image per call), each on
    its own channel, with the API key in the metadata."""
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    requests = [pb.ModelInferRequest(model_name="clazzify", inputs=[
        pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[1],
            contents=pb.InferTensorContents(bytes_contents=[p]))]) for p in photos]
    metadata = (("authorization", f"Bearer {KEY}"),)

    def connect() -> tuple[Callable[[int], bool], Callable[[], None]]:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = GRPCInferenceServiceStub(channel)

        def send(k: int) -> bool:
            try:
                stub.ModelInfer(requests[k], metadata=metadata, timeout=120)
            except grpc.RpcError:
                return False
            return True

        return send, channel.close

    return closed_loop(connect, len(requests), concurrency, seconds, warmup)


def register(bundle: Path, tracking_uri: str) -> str:
    import mlflow

    from clazzify.registry.tracking import TrackingConfig, activate
    from clazzify.registry.versions import register_bundle

    activate(TrackingConfig(tracking_uri, experiment="serving-benchmark"))
    with mlflow.start_run() as run:
        pass
    return register_bundle(bundle, "clazzify", run.info.run_id, {"purpose": "benchmark"})


def load_photos(folder: Path, n: int, seed: int) -> tuple[list[bytes], str]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if files:
        random.Random(seed).shuffle(files)
        chosen = files[:n]
        return [p.read_bytes() for p in chosen], f"{len(chosen)} real photos from {folder}"
    from clazzify.training.demo_data import write_demo_data

    out = Path(tempfile.mkdtemp()) / "demo"
    write_demo_data(out, per_class=max(1, n // 4), size=320, seed=seed, bad_files=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    chosen = files[:n]
    return [p.read_bytes() for p in chosen], f"{len(chosen)} SYNTHETIC photos ({folder} absent)"





def start(cmd: Sequence[str], port: int, health: str, env: dict[str, str], logfile: Path,
          timeout: float = 240.0) -> subprocess.Popen:
    with logfile.open("wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited: {logfile.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", health)
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} not ready after {timeout}s: {logfile.read_text()[-2000:]}")


Request = tuple[str, bytes, dict[str, str]]


def closed_loop(connect: Callable[[], tuple[Callable[[int], bool], Callable[[], None]]],
                n_requests: int, concurrency: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` closed-loop clients, each sending the next of ``n_requests`` as soon as
    the last one is answered; only answers inside the ``seconds`` after ``warmup`` count.

    ``connect()`` opens one client's connection and returns ``(send, close)``: ``send(k)``
    sends request ``k`` and says whether it succeeded.
    """
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    def client(idx: int) -> None:
        send, close = connect()
        i, mine, bad = idx, [], 0
        while True:
            k = i % n_requests
            i += concurrency
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            ok = send(k)
            t1 = time.perf_counter()
            if t_start <= t1 <= t_end:  # answered inside the window (slow systems included)
                if ok:
                    mine.append(t1 - t0)
                else:
                    bad += 1
        close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(latencies, seconds, errors[0])


def load(port: int, requests: Sequence[Request], concurrency: int, seconds: float,
         warmup: float) -> dict:
    """``concurrency`` closed-loop clients, each on its own keep-alive connection.

    The load generator shares the machine's cores with the server it measures, so it spends
    as little CPU as it can: each request is encoded once, up front, and sent as bytes; an
    answer is read up to its ``Content-Length`` with a minimal HTTP/1.1 reader. (With
    ``http.client`` the clients cost about 0.45 ms of CPU per request, measured: 5% of a
    2-core machine at 220 requests/s, all of it taken from the server.)
    """
    encoded = [
        b"".join([f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode(),
                  *(f"{k}: {v}\r\n".encode() for k, v in headers.items()),
                  f"Content-Length: {len(body)}\r\n\r\n".encode(), body])
        for path, body, headers in requests
    ]

    def connect() -> tuple[Callable[[int], bool], Callable[[], None]]:
        conn = [_open_connection(port)]

        def send(k: int) -> bool:
            try:
                return _exchange(conn[0], encoded[k]) == 200
            except (OSError, ValueError):
                conn[0].close()  # a broken keep-alive connection: open a new one
                conn[0] = _open_connection(port)
                return False

        return send, lambda: conn[0].close()

    return closed_loop(connect, len(requests), concurrency, seconds, warmup)


def _open_connection(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(sock: socket.socket, request: bytes) -> int:
    """Send one encoded request and read its whole answer; returns the status code.

    Raises:
        ValueError: an answer without a Content-Length (this reader handles no other kind).
        OSError: the connection broke.
    """
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("connection closed mid-answer")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                   if line[:15].lower() == b"content-length:"), None)
    if length is None:
        raise ValueError(f"an answer without Content-Length: {lines[0]!r}")
    while len(rest) < length:
        chunk = sock.recv(max(65536, length - len(rest)))
        if not chunk:
            raise OSError("connection closed mid-answer")
        rest += chunk
    return int(lines[0].split()[1])


def summarize(latencies: list[float], seconds: float, errors: int = 0) -> dict:
    if not latencies:
        return {"images_per_s": 0.0, "p50_ms": None, "p99_ms": None, "n": 0, "errors": errors}
    ms = np.array(latencies) * 1000
    return {"images_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(latencies), "errors": errors}


class OpenVinoInt8:
    """The bundle's float32 ONNX model quantized by NNCF's post-training quantization
    (OpenVINO's own int8 path), compiled for latency as the server's OpenVINO engines are."""

    engine = "openvino-nncf"

    def __init__(self, bundle: Path, calibration: np.ndarray, threads: int = 0) -> None:
        import nncf
        import openvino as ov

        from clazzify.core.bundle import ONNX_FILE

        t0 = time.perf_counter()
        core = ov.Core()
        model = core.read_model(str(bundle / ONNX_FILE))
        data = nncf.Dataset([img[np.newaxis] for img in calibration])
        quantized = nncf.quantize(model, data, subset_size=len(calibration))
        self.quantize_s = time.perf_counter() - t0
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._model = core.compile_model(quantized, "CPU", config)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self._model(np.ascontiguousarray(images, dtype=np.uint8))[0])


def _predictors(bundle: Path, engine: str, calibration: np.ndarray | None = None):
    """``(setting, predictor)`` variants of ``engine`` worth measuring in-process: the
    engine's defaults, and the engine as the server runs it (the last one)."""
    from clazzify.core.bundle import load_predictor
    from clazzify.serving.engine import load_engine_predictor

    if engine == "openvino-nncf":
        return [("default", OpenVinoInt8(bundle, calibration))]
    return [("default", load_predictor(bundle, engine)),
            ("as served", load_engine_predictor(bundle, engine))]


def measure_engine(predictors, arrays: np.ndarray, seconds: float,
                   previous: dict | None = None) -> dict:
    """Images/s per setting and batch size in-process, keeping the best of this and
    ``previous``: other load only ever lowers the figures, so the maximum is the ceiling."""
    out: dict = {k: dict(v) for k, v in (previous or {}).items()}
    for setting, predictor in predictors:
        by_batch = dict(out.get(setting, {}).get("by_batch", {}))
        callers = getattr(predictor, "concurrency", 1)  # OpenVINO streams: one caller each
        for batch in (1, 4, 8, 16):
            x = np.resize(arrays, (batch, *arrays.shape[1:]))
            t_end = time.perf_counter() + seconds

            def caller(mine: list[float], x=x, t_end=t_end, predictor=predictor) -> None:
                predictor.predict(x)
                while time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    predictor.predict(x)
                    mine.append(time.perf_counter() - t0)

            lists: list[list[float]] = [[] for _ in range(callers)]
            threads = [threading.Thread(target=caller, args=(m,)) for m in lists]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            times = [t for m in lists for t in m]
            # Timed calls only (each caller's warm-up call is not): one caller gives the
            # former n / sum(times); parallel callers share the busiest caller's window.
            rate = len(times) * batch / max(sum(m) for m in lists)
            old = by_batch.get(batch, {"images_per_s": 0.0, "p50_ms": float("inf")})
            by_batch[batch] = {"images_per_s": max(rate, old["images_per_s"]),
                               "p50_ms": min(1000 * statistics.median(times), old["p50_ms"])}
        best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
        out[setting] = {"by_batch": by_batch, "best_batch": best,
                        "images_per_s": by_batch[best]["images_per_s"],
                        "single_image_ms": by_batch[1]["p50_ms"]}
    return out


def agreement(predictors: dict, arrays: np.ndarray) -> dict:
    """Top-1 agreement of each engine with float32 ONNX on the benchmark's photos."""
    ref = predictors["onnx"][0][1].predict(arrays).argmax(1)
    return {name: float((variants[0][1].predict(arrays).argmax(1) == ref).mean())
            for name, variants in predictors.items()}


def measure_parsing(photos: Sequence[bytes], image_size: int) -> dict:
    """Milliseconds per image of the request path's pure-CPU pieces, one core: JSON +
    base64 of a V1 body, and decoding."""
    from clazzify.core.imaging import image_to_array
    from clazzify.serving.config import ServingLimits
    from clazzify.serving.protocol import v1_images

    limits = ServingLimits()
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode()
              for p in photos]
    t0 = time.perf_counter()
    for body in bodies:
        v1_images(json.loads(body), limits)
    t1 = time.perf_counter()
    for p in photos:
        image_to_array(p, image_size)
    t2 = time.perf_counter()
    n = len(photos)
    return {"json_base64_ms": 1000 * (t1 - t0) / n, "decode_ms": 1000 * (t2 - t1) / n,
            "mean_photo_kb": sum(map(len, photos)) / n / 1024}


def measure_pipeline(predictor, photos: Sequence[bytes], image_size: int, seconds: float,
                     decode_threads: int, max_batch: int) -> dict:
    """Decode threads feed the engine threads (one per ``predictor.concurrency``), each
    taking up to ``max_batch`` decoded images at a time, in one process: the server's work
    without HTTP. Images/s."""
    import queue

    from clazzify.core.imaging import image_to_array

    ready: queue.Queue = queue.Queue(maxsize=4 * max_batch)
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds
    done = [0]

    def decoder(offset: int) -> None:
        k = offset
        while time.perf_counter() < stop_at:
            with contextlib.suppress(queue.Full):
                ready.put(image_to_array(photos[k % len(photos)], image_size), timeout=0.5)
            k += decode_threads

    def engine() -> None:
        while time.perf_counter() < stop_at:
            try:
                batch = [ready.get(timeout=0.5)]
            except queue.Empty:
                continue
            while len(batch) < max_batch:
                try:
                    batch.append(ready.get_nowait())
                except queue.Empty:
                    break
            predictor.predict(np.stack(batch))
            with lock:
                done[0] += len(batch)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=decoder, args=(i,)) for i in range(decode_threads)]
    threads += [threading.Thread(target=engine)
                for _ in range(getattr(predictor, "concurrency", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"images_per_s": done[0] / (time.perf_counter() - t0)}


def measure_request_path(predictor, photos: Sequence[bytes], image_size: int) -> dict:
    """Decode one photo then predict it, in-process, photo after photo: a server's floor."""
    from clazzify.core.imaging import image_to_array

    decode, total = [], []
    for p in photos:
        t0 = time.perf_counter()
        x = image_to_array(p, image_size)[np.newaxis]
        t1 = time.perf_counter()
        predictor.predict(x)
        decode.append(t1 - t0)
        total.append(time.perf_counter() - t0)
    d, t = np.array(decode) * 1000, np.array(total) * 1000
    return {"decode_p50_ms": float(np.percentile(d, 50)),
            "decode_p99_ms": float(np.percentile(d, 99)), "decode_mean_ms": float(d.mean()),
            "p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}


def best_of(old: dict | None, new: dict) -> dict:
    """The better round: more images/s."""
    return new if old is None or new["images_per_s"] > old["images_per_s"] else old


def reference(results: dict) -> float:
    """The issue's yardstick: float32 ONNX Runtime alone, default threads, batch 1."""
    return results["engines"]["onnx"]["default"]["by_batch"][1]["images_per_s"]


def markdown(results: dict, levels: Sequence[int]) -> str:
    ref = reference(results)
    lines = ["| path | " + " | ".join(f"c={c}: img/s · p50 · p99 ms" for c in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, by_level in results["systems"].items():
        cells = []
        for c in levels:
            r = by_level[c]
            cells.append(f"{r['images_per_s']:.1f} ({r['images_per_s'] / ref:.2f}×) · "
                         f"{r['p50_ms']:.0f} · {r['p99_ms']:.0f}"
                         + (f" ({r['errors']} errors)" if r["errors"] else "")
                         if r["n"] else f"no answers ({r['errors']} errors)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| engine in-process (decoded pixels) | setting | b1 | b4 | b8 | b16 | "
              "agreement with fp32 |", "|---|---|---:|---:|---:|---:|---:|"]
    for engine, settings in results["engines"].items():
        for setting, eng in settings.items():
            by = eng["by_batch"]
            lines.append(f"| {engine} | {setting} | " + " | ".join(
                f"{by[b]['images_per_s']:.0f}" for b in (1, 4, 8, 16)) +
                f" | {results['agreement'].get(engine, float('nan')):.4f} |")
    parse = results["parsing"]
    lines += ["", f"Per image on one core: JSON + base64 {parse['json_base64_ms']:.2f} ms, "
              f"decode {parse['decode_ms']:.2f} ms ({1000 / parse['decode_ms']:.0f} img/s; "
              f"mean photo {parse['mean_photo_kb']:.0f} KB).", "",
              "| decode + engine pipeline in one process | img/s |", "|---|---:|"]
    lines += [f"| {name} | {r['images_per_s']:.1f} |" for name, r in results["pipeline"].items()]
    return "\n".join(lines)


def ratios(results: dict, levels: Sequence[int]) -> dict[str, float]:
    """The issue's targets: each server over float32 ONNX Runtime alone (default threads,
    batch 1); p99 at the lowest concurrency over decode + engine for one image."""
    ref, low = reference(results), min(levels)
    out = {}
    for name, by_level in results["systems"].items():
        for c in levels:
            out[f"{name} at c={c} / fp32 ORT alone b1"] = by_level[c]["images_per_s"] / ref
        engine = results["served_engine"].get(name)
        if engine in results["request_path"]:
            floor = results["request_path"][engine]["p50_ms"]
            out[f"{name} p99 at c={low} / (decode + engine, one image)"] = (
                (by_level[low]["p99_ms"] or float("inf")) / floor)
    return out


def serving_sizes(results: dict, levels: Sequence[int], model: str, system: str) -> dict:
    """The numbers deployment sizes come from: the served engine's measured best batch size
    and one replica's best measured throughput (tests/unit/test_isvc.py holds the
    InferenceService's --max-batch-size equal to ``best_batch_size``)."""
    engine = results["served_engine"][system]
    eng = results["engines"][engine]["as served"]
    return {
        "source": "benchmarks/model_server.py",
        "model": model,
        "engine": engine,
        "replica_cpus": results["cpus"],
        "best_batch_size": int(results["server_batch"][system]),
        "engine_images_per_s_at_best_batch": round(eng["images_per_s"], 1),
        "replica_images_per_s": round(max(results["systems"][system][c]["images_per_s"]
                                          for c in levels), 1),
    }


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="A trained bundle (with model.int8.onnx); default: an untrained "
                             "--architecture exported here.")
    parser.add_argument("--architecture", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--n-photos", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="Measured seconds per cell.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; best counts.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--servers", default="auto:4,onnx:4",
                        help="clazzify servers to start, ENGINE:MAX_BATCH each.")
    parser.add_argument("--systems", default="clazzify",
                        help="clazzify, v2 (the first server's V2 REST with the binary extension), "
                             "grpc (its gRPC port), flask, mlflow.")
    parser.add_argument("--engines", default="onnx,openvino-int8",
                        help="Engines measured in-process: the table's, and openvino-nncf (NNCF's "
                             "OpenVINO-IR int8 of the float32 model, not the bundle's ONNX one).")
    parser.add_argument("--write-sizes", type=Path, default=None,
                        help=f"Write the first server's measured sizes here (e.g. {SIZES}: "
                             "the deploy step's and manifests' one source of serving sizes).")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: serving.json in the work folder).")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = args.systems.split(",")
    engines = [e for e in args.engines.split(",")
               if (e != "openvino-nncf" or _has_nncf()) and (not e.startswith("openvino") or _has_openvino())]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from clazzify.core.bundle import BundleMeta, auto_engines, find_bundle

    work = Path(tempfile.mkdtemp(prefix="clazzify-bench-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    if args.bundle:
        bundle = find_bundle(args.bundle)
        model = f"{BundleMeta.load(bundle).architecture} {BundleMeta.load(bundle).image_size} px, trained"
    else:
        log(f"building an untrained {args.architecture} at {args.image_size} px in {work}")
        bundle = build_bundle(work, args.architecture, args.image_size)
        model = f"{args.architecture} {args.image_size} px, untrained"
    image_size = BundleMeta.load(bundle).image_size
    version = register(bundle, tracking)
    photos, source = load_photos(args.photos, args.n_photos + 200, seed=0)
    photos, calibration_photos = photos[: args.n_photos], photos[args.n_photos :]
    log(f"registered as models:/clazzify/{version}; {source}")

    from clazzify.core.imaging import image_to_array
    from clazzify.scoring.endpoint_client import INFERENCE_HEADER, encode_infer_request

    arrays = np.stack([image_to_array(p, image_size) for p in photos])
    calibration = np.stack([image_to_array(p, image_size) for p in calibration_photos])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "CLAZZIFY_API_KEYS": KEY,
           # mlflow models serve runs `uvicorn` from PATH: the one beside this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = work / "logs"
    logs.mkdir()
    uri = "models:/clazzify@champion"
    v1 = [("/v1/models/clazzify:predict",
           json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode(),
           {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
          for p in photos]
    v2 = [("/v2/models/clazzify/infer", body,
           {"Content-Type": "application/octet-stream", "Authorization": f"Bearer {KEY}",
            INFERENCE_HEADER: str(json_length)})
          for body, json_length in (encode_infer_request([p], request_id="b") for p in photos)]
    raw = [("/predict", p, {"Content-Type": "application/octet-stream"}) for p in photos]
    # The registered pyfunc takes the model server's V1 body (base64 images) as well.
    b64 = [("/invocations",
            json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode(),
            {"Content-Type": "application/json"}) for p in photos]
    plans = []  # (name, command, health path, requests)
    served: dict[str, str] = {}
    server_batch: dict[str, int] = {}
    grpc_ports: dict[str, int] = {}
    if "clazzify" in wanted:
        for spec in args.servers.split(","):
            engine, _, batch = spec.partition(":")
            name = f"clazzify ({engine}, batch {batch or 4})"
            served[name] = auto_engines(bundle)[0] if engine == "auto" else engine
            server_batch[name] = int(batch or 4)
            grpc_ports[name] = free_port()
            plans.append((name, [sys.executable, "-m", "serving", "--model-uri", uri,
                                 "--engine", engine, "--max-batch-size", str(batch or 4),
                                 "--grpc-port", str(grpc_ports[name]), "--http-port"],
                          "/v2/health/ready", v1))
    if "flask" in wanted:
        plans.append(("flask", [sys.executable, str(ROOT / "benchmarks" / "flask_baseline.py"),
                                str(bundle)], "/health", raw))
    if "mlflow" in wanted:
        plans.append(("mlflow", [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port"],
                      "/ping", b64))

    results: dict = {"model": model, "photos": source, "cpus": os.cpu_count(),
                     "load_before": loadavg(), "seconds_per_cell": args.seconds,
                     "rounds": args.rounds, "engines": {}, "request_path": {},
                     "pipeline": {}, "served_engine": served, "server_batch": server_batch,
                     "systems": {name: {} for name, *_ in plans}}
    grpc_server = next(iter(grpc_ports), None) if "grpc" in wanted else None
    grpc_name = f"{grpc_server} gRPC"
    if grpc_server:
        results["systems"][grpc_name] = {}
    v2_server = next(iter(grpc_ports), None) if "v2" in wanted else None
    v2_name = f"{v2_server} V2 binary"
    if v2_server:
        results["systems"][v2_name] = {}
    log("loading the engines in-process")
    predictors = {e: _predictors(bundle, e, calibration) for e in engines}
    if "openvino-nncf" in predictors:
        results["openvino_nncf_quantize_s"] = predictors["openvino-nncf"][0][1].quantize_s
    results["agreement"] = agreement(predictors, arrays)
    results["parsing"] = measure_parsing(photos, image_size)
    running: list[tuple[str, subprocess.Popen, int, list]] = []

    def record(rnd: int, name: str, c: int, r: dict) -> None:
        """Log one server cell and keep its best round."""
        log(f"round {rnd}: {name} c={c}: {r['images_per_s']:.1f} img/s "
            f"p50 {r['p50_ms'] or 0:.0f} ms p99 {r['p99_ms'] or 0:.0f} ms errors {r['errors']}")
        results["systems"][name][c] = best_of(results["systems"][name].get(c), r)
    try:
        for name, cmd, health, requests in plans:
            port = free_port()
            log(f"starting {name} on port {port}")
            slug = "".join(ch for ch in name if ch.isalnum())
            proc = start([*cmd, str(port)], port, health, env, logs / f"{slug}.log")
            running.append((name, proc, port, requests))
        for rnd in range(1, args.rounds + 1):
            for engine, variants in predictors.items():
                log(f"round {rnd}: the {engine} engine in-process")
                results["engines"][engine] = measure_engine(
                    variants, arrays[:64], 0.75, previous=results["engines"].get(engine))
                path = measure_request_path(variants[-1][1], photos[:64], image_size)
                old = results["request_path"].get(engine)
                results["request_path"][engine] = (
                    path if old is None or path["p99_ms"] < old["p99_ms"] else old)
                for setting, predictor in variants:
                    for batch in (1, 4, 8):
                        key = f"{engine} {setting}, engine batch ≤ {batch}"
                        r = measure_pipeline(predictor, photos, image_size, args.seconds / 2,
                                             decode_threads=2, max_batch=batch)
                        results["pipeline"][key] = best_of(results["pipeline"].get(key), r)
            for c in levels:
                for name, _, port, requests in running:
                    record(rnd, name, c, load(port, requests, c, args.seconds, warmup=1.0))
                if v2_server:
                    v2_port = next(port for name, _, port, _ in running if name == v2_server)
                    record(rnd, v2_name, c, load(v2_port, v2, c, args.seconds, warmup=1.0))
                if grpc_server:
                    record(rnd, grpc_name, c,
                           load_grpc(grpc_ports[grpc_server], photos, c, args.seconds, warmup=1.0))
    finally:
        for _, proc, _, _ in running:
            stop(proc)
    results["load_after"] = loadavg()

    out = args.out or work / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"model: {model}; {source}; {results['cpus']} CPUs; load average before "
          f"{results['load_before']}, after {results['load_after']}")
    print(markdown(results, levels))
    print()
    for name, value in ratios(results, levels).items():
        print(f"- {name}: {value:.2f}")
    print(f"results: {out}")
    if args.write_sizes and served:
        sizes = serving_sizes(results, levels, model, next(iter(served)))
        args.write_sizes.write_text(json.dumps(sizes, indent=2) + "\n")
        print(f"serving sizes: {args.write_sizes}")


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def _has_nncf() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


if __name__ == "__main__":
    main()
