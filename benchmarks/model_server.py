"""Serving throughput and latency: this server against three references, in one run.

    python benchmarks/model_server.py [--architecture mobilenet_v2] [--image-size 224]
                                 [--photos /work/shared/datasets/restaurant-photos]
                                 [--seconds 6] [--concurrency 1,8,32]

Same model (one bundle, registered in a throwaway MLflow store), same real photos, same
machine, one run. Each system gets one image per request at concurrency 1, 8 and 32:

- clazzify: ``python -m serving`` (KServe V1, base64 JPEG, API key, adaptive batching),
  once per engine (ONNX Runtime, and OpenVINO bfloat16 when installed);
- flask: the original design, Flask calling Keras ``model.predict`` per request
  (benchmarks/flask_baseline.py; raw JPEG bytes in the body);
- mlflow: ``mlflow models serve --env-manager local`` of the registered model (its pyfunc
  takes the same V1 base64 body; local env so the speed, not the env build, is measured);
- clazzify gRPC: the first clazzify server's V2 gRPC port (KServe's ModelInfer, one BYTES
  image per call, API key in metadata), the same closed loop as REST;
- engine: each engine in-process on decoded arrays at its best batch size (the
  ceiling) and on one image, plus the in-process request path (decode one photo, then
  predict it) whose p99 is the floor for a server's p99 at concurrency 1.

The machine is shared, so all servers run at once and every cell (system x concurrency,
and the in-process figures) is measured once per round, the rounds interleaved; each
cell reports its best round. The model's weights are random (speed does not depend on
them); the photos stay where they are. Prints a Markdown table and the target ratios,
and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import random
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


def serving_sizes(results: dict, levels: Sequence[int], model: str) -> dict:
    """The numbers deployment sizes come from: the default engine's best batch size and one
    replica's best measured throughput (tests/unit/test_isvc.py holds the InferenceService's
    --max-batch-size equal to ``best_batch_size``)."""
    engine = results["engines"]["onnx"]
    server = results["systems"]["clazzify (onnx)"]
    return {
        "source": "benchmarks/model_server.py",
        "model": model,
        "engine": "onnx",
        "replica_cpus": results["cpus"],
        "best_batch_size": int(engine["best_batch"]),
        "engine_images_per_s_at_best_batch": round(engine["images_per_s"], 1),
        "replica_images_per_s": round(max(server[c]["images_per_s"] for c in levels), 1),
    }


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
    """``concurrency`` closed-loop clients, each on its own keep-alive connection."""

    def connect() -> tuple[Callable[[int], bool], Callable[[], None]]:
        conn = [http.client.HTTPConnection("127.0.0.1", port, timeout=120)]

        def send(k: int) -> bool:
            path, body, headers = requests[k]
            try:
                conn[0].request("POST", path, body=body, headers=headers)
                resp = conn[0].getresponse()
                resp.read()
                return resp.status == 200
            except (OSError, http.client.HTTPException):
                conn[0].close()  # a broken keep-alive connection: open a new one
                conn[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                return False

        return send, lambda: conn[0].close()

    return closed_loop(connect, len(requests), concurrency, seconds, warmup)


def summarize(latencies: list[float], seconds: float, errors: int = 0) -> dict:
    if not latencies:
        return {"images_per_s": 0.0, "p50_ms": None, "p99_ms": None, "n": 0, "errors": errors}
    ms = np.array(latencies) * 1000
    return {"images_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(latencies), "errors": errors}


def _predictors(bundle: Path, engine: str):
    """The in-process variants of ``engine`` worth trying (the best per batch counts)."""
    if engine == "onnx":
        from clazzify.core.bundle import OnnxPredictor

        return [OnnxPredictor(bundle, spinning=True), OnnxPredictor(bundle, spinning=False)]
    from clazzify.serving.engine import load_engine_predictor

    return [load_engine_predictor(bundle, engine)]


def measure_engine(bundle: Path, engine: str, arrays: np.ndarray, seconds: float,
                   previous: dict | None = None) -> dict:
    """Images/s per batch size in-process, keeping the best of this and ``previous``:
    other load on the machine only ever lowers the figures, so the maximum is the ceiling."""
    by_batch: dict[int, dict] = dict(previous["by_batch"]) if previous else {}
    for predictor in _predictors(bundle, engine):
        for batch in (1, 4, 8, 16, 32, 64):
            x = np.resize(arrays, (batch, *arrays.shape[1:]))
            predictor.predict(x)
            n, times, t_end = 0, [], time.perf_counter() + seconds
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                predictor.predict(x)
                times.append(time.perf_counter() - t0)
                n += batch
            rate = n / sum(times)
            old = by_batch.get(batch, {"images_per_s": 0.0, "p50_ms": float("inf")})
            by_batch[batch] = {"images_per_s": max(rate, old["images_per_s"]),
                               "p50_ms": min(1000 * statistics.median(times), old["p50_ms"])}
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    return {"by_batch": by_batch, "best_batch": best,
            "images_per_s": by_batch[best]["images_per_s"],
            "single_image_ms": by_batch[1]["p50_ms"]}


def measure_request_path(bundle: Path, engine: str, photos: Sequence[bytes],
                         image_size: int) -> dict:
    """Decode one photo then predict it, in-process, photo after photo: a server's floor."""
    from clazzify.core.imaging import image_to_array

    predictor = _predictors(bundle, engine)[-1]
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


def markdown(results: dict, levels: Sequence[int]) -> str:
    lines = ["| system | " + " | ".join(f"c={c}: img/s · p50 · p99 (ms)" for c in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name, by_level in results["systems"].items():
        cells = []
        for c in levels:
            r = by_level[c]
            cells.append(f"{r['images_per_s']:.1f} · {r['p50_ms']:.0f} · {r['p99_ms']:.0f}"
                         + (f" ({r['errors']} errors)" if r["errors"] else "")
                         if r["n"] else f"no answers ({r['errors']} errors)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for engine, eng in results["engines"].items():
        path = results["request_path"][engine]
        lines.append(f"| engine {engine} in-process | best batch {eng['best_batch']}: "
                     f"{eng['images_per_s']:.1f} img/s | one image: "
                     f"{eng['single_image_ms']:.1f} ms | decode+predict one photo: p50 "
                     f"{path['p50_ms']:.0f}, p99 {path['p99_ms']:.0f} ms |")
    return "\n".join(lines)


def ratios(results: dict, levels: Sequence[int]) -> dict[str, float]:
    systems, top, low = results["systems"], max(levels), min(levels)
    out = {}
    for engine, eng in results["engines"].items():
        ours = systems.get(f"clazzify ({engine})")
        if not ours:
            continue
        best = max(ours[c]["images_per_s"] for c in levels)
        for ref in ("flask", "mlflow"):
            if ref in systems:
                out[f"clazzify ({engine}) / {ref} throughput at c={top}"] = (
                    ours[top]["images_per_s"] / max(systems[ref][top]["images_per_s"], 1e-9))
        out[f"clazzify ({engine}) best throughput / engine best"] = best / eng["images_per_s"]
        path = results["request_path"][engine]
        sequential = 1000 / (path["decode_mean_ms"] + 1000 / eng["images_per_s"])
        out[f"clazzify ({engine}) best throughput / decode+engine in sequence"] = best / sequential
        p99 = ours[low]["p99_ms"] or float("inf")
        out[f"clazzify ({engine}) p99 at c={low} / engine one-image latency"] = (
            p99 / eng["single_image_ms"])
        out[f"clazzify ({engine}) p99 at c={low} / in-process decode+predict p99"] = (
            p99 / path["p99_ms"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--n-photos", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="Measured seconds per cell.")
    parser.add_argument("--rounds", type=int, default=2, help="Interleaved rounds; best counts.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--systems", default="clazzify,grpc,flask,mlflow")
    parser.add_argument("--sizes-out", type=Path, default=SIZES,
                        help="Where the measured best batch size and per-replica throughput go "
                             "(the deploy step's and manifests' one source of serving sizes).")
    parser.add_argument("--engines", default="onnx,openvino-bf16",
                        help="Engines to serve and measure (openvino ones need its extra).")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: serving.json in the work folder).")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    wanted = args.systems.split(",")
    engines = [e for e in args.engines.split(",") if e == "onnx" or _has_openvino()]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    work = Path(tempfile.mkdtemp(prefix="clazzify-bench-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    log(f"building an untrained {args.architecture} at {args.image_size} px in {work}")
    bundle = build_bundle(work, args.architecture, args.image_size)
    version = register(bundle, tracking)
    photos, source = load_photos(args.photos, args.n_photos, seed=0)
    log(f"registered as models:/clazzify/{version}; {source}")

    from clazzify.core.imaging import image_to_array

    arrays = np.stack([image_to_array(p, args.image_size) for p in photos])
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
    raw = [("/predict", p, {"Content-Type": "application/octet-stream"}) for p in photos]
    # The registered pyfunc takes the model server's V1 body (base64 images) as well.
    b64 = [("/invocations",
            json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode(),
            {"Content-Type": "application/json"}) for p in photos]
    plans = []  # (name, command, health path, requests)
    grpc_ports: dict[str, int] = {}
    if "clazzify" in wanted:
        for engine in engines:
            grpc_ports[engine] = free_port()
            plans.append((f"clazzify ({engine})", [sys.executable, "-m", "serving", "--model-uri",
                          uri, "--engine", engine, "--grpc-port", str(grpc_ports[engine]),
                          "--http-port"], "/v2/health/ready", v1))
    if "flask" in wanted:
        plans.append(("flask", [sys.executable, str(ROOT / "benchmarks" / "flask_baseline.py"),
                                str(bundle)], "/health", raw))
    if "mlflow" in wanted:
        plans.append(("mlflow", [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri,
                                 "--env-manager", "local", "--host", "127.0.0.1", "--port"],
                      "/ping", b64))

    results: dict = {"model": f"{args.architecture} {args.image_size} px, untrained",
                     "photos": source, "cpus": os.cpu_count(), "seconds_per_cell": args.seconds,
                     "rounds": args.rounds, "engines": {}, "request_path": {},
                     "systems": {name: {} for name, *_ in plans}}
    grpc_engine = next(iter(grpc_ports), None) if "grpc" in wanted else None
    grpc_name = f"clazzify ({grpc_engine}) gRPC"
    if grpc_engine:
        results["systems"][grpc_name] = {}
    running: list[tuple[str, subprocess.Popen, int, list]] = []
    try:
        for name, cmd, health, requests in plans:
            port = free_port()
            log(f"starting {name} on port {port}")
            slug = name.replace(" ", "").replace("(", "-").replace(")", "")
            proc = start([*cmd, str(port)], port, health, env, logs / f"{slug}.log")
            running.append((name, proc, port, requests))
        for rnd in range(1, args.rounds + 1):
            for engine in engines:
                log(f"round {rnd}: the {engine} engine in-process")
                results["engines"][engine] = measure_engine(
                    bundle, engine, arrays[:64], 0.75, previous=results["engines"].get(engine))
                path = measure_request_path(bundle, engine, photos, args.image_size)
                old = results["request_path"].get(engine)
                results["request_path"][engine] = (
                    path if old is None or path["p99_ms"] < old["p99_ms"] else old)
            for c in levels:
                for name, _, port, requests in running:
                    r = load(port, requests, c, args.seconds, warmup=1.0)
                    log(f"round {rnd}: {name} c={c}: {r['images_per_s']:.1f} img/s "
                        f"p50 {r['p50_ms'] or 0:.0f} ms p99 {r['p99_ms'] or 0:.0f} ms "
                        f"errors {r['errors']}")
                    results["systems"][name][c] = best_of(results["systems"][name].get(c), r)
                if grpc_engine:
                    r = load_grpc(grpc_ports[grpc_engine], photos, c, args.seconds, warmup=1.0)
                    log(f"round {rnd}: {grpc_name} c={c}: {r['images_per_s']:.1f} img/s "
                        f"p50 {r['p50_ms'] or 0:.0f} ms p99 {r['p99_ms'] or 0:.0f} ms "
                        f"errors {r['errors']}")
                    results["systems"][grpc_name][c] = best_of(
                        results["systems"][grpc_name].get(c), r)
    finally:
        for _, proc, _, _ in running:
            stop(proc)

    out = args.out or work / "serving.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(markdown(results, levels))
    print()
    for name, value in ratios(results, levels).items():
        print(f"- {name}: {value:.2f}")
    print()
    for engine, eng in results["engines"].items():
        path = results["request_path"][engine]
        print(f"engine {engine} by batch: " + ", ".join(
            f"{b}: {r['images_per_s']:.0f}/s" for b, r in eng["by_batch"].items()))
    print(f"decode (image_to_array) per photo: mean {path['decode_mean_ms']:.1f} ms, "
          f"p50 {path['decode_p50_ms']:.1f} ms, p99 {path['decode_p99_ms']:.1f} ms")
    print(f"results: {out}")
    if "onnx" in results["engines"] and "clazzify (onnx)" in results["systems"]:
        sizes = serving_sizes(results, levels, f"{args.architecture} {args.image_size} px")
        args.sizes_out.write_text(json.dumps(sizes, indent=2) + "\n")
        print(f"serving sizes: {args.sizes_out}")


def _has_openvino() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


if __name__ == "__main__":
    main()
