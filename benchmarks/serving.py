"""Serving throughput and latency: this server against three references, in one run.

    python benchmarks/serving.py [--architecture mobilenet_v2] [--image-size 224]
                                 [--photos /work/shared/datasets/restaurant-photos]
                                 [--seconds 6] [--concurrency 1,8,32]

Same model (one bundle, registered in a throwaway MLflow store), same real photos, same
machine, one run. Each system gets one image per request at concurrency 1, 8 and 32:

- clazzify: ``python -m serving`` (KServe V1, base64 JPEG, API key, adaptive batching, ONNX);
- flask: the original design, Flask calling Keras ``model.predict`` per request
  (benchmarks/flask_baseline.py; raw JPEG bytes in the body);
- mlflow: ``mlflow models serve --env-manager local`` of the registered model; it takes
  pixel tensors, so the client sends each photo as the JSON pixel list the pyfunc expects
  (decoded before the clock starts);
- engine: the ONNX Runtime predictor in-process on decoded arrays at its best batch
  size (the ceiling), plus its single-image latency.

The model's weights are random (speed does not depend on them); the photos stay where
they are. Prints a Markdown table and writes JSON next to --out.
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

ROOT = Path(__file__).resolve().parents[1]
KEY = "benchmark-key-0123456789abcdef"
PHOTOS = Path("/work/shared/datasets/restaurant-photos")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build_bundle(work: Path, architecture: str, image_size: int) -> Path:
    """An untrained model of the chosen architecture, exported like training exports it."""
    from clazzify.bundle import BundleMeta, export_bundle
    from clazzify.models import ModelSpec, build_model

    classes = ["ambiance", "food", "human", "menu"]
    model = build_model(ModelSpec(architecture, len(classes), image_size, augment=True))
    meta = BundleMeta(classes, image_size, architecture, "benchmark", "benchmark")
    return export_bundle(model, meta, work / "bundle")


def register(bundle: Path, tracking_uri: str) -> str:
    import mlflow

    from clazzify.registry import register_bundle
    from clazzify.tracking import TrackingConfig, activate

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
    from clazzify.demo_data import write_demo_data

    out = Path(tempfile.mkdtemp()) / "demo"
    write_demo_data(out, per_class=max(1, n // 4), size=320, seed=seed, bad_files=False)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    chosen = files[:n]
    return [p.read_bytes() for p in chosen], f"{len(chosen)} SYNTHETIC photos ({folder} absent)"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


Request = tuple[str, bytes, dict[str, str]]


def load(port: int, requests: Sequence[Request], concurrency: int, seconds: float,
         warmup: float) -> dict:
    """``concurrency`` closed-loop clients, each on its own keep-alive connection."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    t_start = time.perf_counter() + warmup
    t_end = t_start + seconds

    def client(idx: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = idx
        mine: list[float] = []
        bad = 0
        while True:
            path, body, headers = requests[i % len(requests)]
            i += concurrency
            t0 = time.perf_counter()
            if t0 >= t_end:
                break
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                ok = False
            t1 = time.perf_counter()
            if t_start <= t0 and t1 <= t_end:
                if ok:
                    mine.append(t1 - t0)
                else:
                    bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(latencies, seconds, errors[0])


def summarize(latencies: list[float], seconds: float, errors: int = 0) -> dict:
    if not latencies:
        return {"images_per_s": 0.0, "p50_ms": None, "p99_ms": None, "n": 0, "errors": errors}
    ms = np.array(latencies) * 1000
    return {"images_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "n": len(latencies), "errors": errors}


def measure_engine(bundle: Path, arrays: np.ndarray, seconds: float) -> dict:
    from clazzify.bundle import load_predictor

    predictor = load_predictor(bundle, "onnx")
    by_batch = {}
    for batch in (1, 4, 8, 16, 32, 64):
        x = np.resize(arrays, (batch, *arrays.shape[1:]))
        predictor.predict(x)
        n, times, t_end = 0, [], time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            predictor.predict(x)
            times.append(time.perf_counter() - t0)
            n += batch
        by_batch[batch] = {"images_per_s": n / sum(times),
                           "p50_ms": 1000 * statistics.median(times)}
    best = max(by_batch, key=lambda b: by_batch[b]["images_per_s"])
    return {"by_batch": by_batch, "best_batch": best,
            "images_per_s": by_batch[best]["images_per_s"],
            "single_image_ms": by_batch[1]["p50_ms"]}


def measure_decode(photos: Sequence[bytes], image_size: int) -> float:
    from clazzify.imaging import image_to_array

    t0 = time.perf_counter()
    for p in photos:
        image_to_array(p, image_size)
    return 1000 * (time.perf_counter() - t0) / len(photos)


def run_system(name: str, proc_factory: Callable[[], subprocess.Popen], port: int,
               requests: Sequence[Request], levels: Sequence[int], seconds: float) -> dict:
    log(f"starting {name}")
    proc = proc_factory()
    try:
        out = {}
        for c in levels:
            out[c] = load(port, requests, c, seconds, warmup=min(2.0, seconds / 2))
            r = out[c]
            log(f"  {name} c={c}: {r['images_per_s']:.1f} img/s p50 {r['p50_ms'] or 0:.1f} ms "
                f"p99 {r['p99_ms'] or 0:.1f} ms errors {r['errors']}")
        return out
    finally:
        stop(proc)


def markdown(results: dict, levels: Sequence[int]) -> str:
    eng = results["engine"]
    lines = ["| system | " + " | ".join(f"c={c} img/s · p50 · p99 (ms)" for c in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for name in ("clazzify", "flask", "mlflow"):
        cells = []
        for c in levels:
            r = results[name].get(str(c)) or results[name].get(c)
            cells.append(f"{r['images_per_s']:.1f} · {r['p50_ms']:.1f} · {r['p99_ms']:.1f}"
                         + (f" ({r['errors']} errors)" if r["errors"] else "")
                         if r["n"] else f"no answers ({r['errors']} errors)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| engine in-process, batch {eng['best_batch']} | "
                 f"{eng['images_per_s']:.1f} img/s; single image {eng['single_image_ms']:.1f} ms |"
                 + " |" * (len(levels) - 1))
    return "\n".join(lines)


def ratios(results: dict, levels: Sequence[int]) -> dict:
    ours, eng = results["clazzify"], results["engine"]
    top = max(levels)
    flask_top = results["flask"][top]["images_per_s"]
    return {
        f"clazzify/flask throughput at c={top}":
            ours[top]["images_per_s"] / flask_top if flask_top else float("inf"),
        f"clazzify/mlflow throughput at c={top}":
            ours[top]["images_per_s"] / max(results["mlflow"][top]["images_per_s"], 1e-9),
        "clazzify best throughput / engine best":
            max(ours[c]["images_per_s"] for c in levels) / eng["images_per_s"],
        "clazzify best throughput / (decode + engine, sequential)":
            max(ours[c]["images_per_s"] for c in levels) / results["decode_plus_engine_per_s"],
        "clazzify p99 at c=1 / engine single-image latency":
            (ours[min(levels)]["p99_ms"] or float("inf")) / eng["single_image_ms"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--n-photos", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=6.0, help="Measured seconds per cell.")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--systems", default="clazzify,flask,mlflow")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON results (default: serving.json in the work folder).")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    systems = args.systems.split(",")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    work = Path(tempfile.mkdtemp(prefix="clazzify-bench-"))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    log(f"building an untrained {args.architecture} at {args.image_size} px in {work}")
    bundle = build_bundle(work, args.architecture, args.image_size)
    version = register(bundle, tracking)
    photos, source = load_photos(args.photos, args.n_photos, seed=0)
    log(f"registered as models:/clazzify/{version}; {source}")

    from clazzify.imaging import image_to_array

    arrays = np.stack([image_to_array(p, args.image_size) for p in photos])
    results: dict = {"model": f"{args.architecture} {args.image_size}px (ONNX)", "photos": source,
                     "cpus": os.cpu_count(), "seconds_per_cell": args.seconds}
    log("measuring the engine in-process")
    results["engine"] = measure_engine(bundle, arrays[:64], seconds=min(args.seconds, 3.0))
    results["decode_ms_per_image"] = measure_decode(photos, args.image_size)
    results["decode_plus_engine_per_s"] = 1000 / (
        results["decode_ms_per_image"] + 1000 / results["engine"]["images_per_s"])

    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "CLAZZIFY_API_KEYS": KEY,
           # mlflow models serve runs `uvicorn` from PATH: the one beside this interpreter
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    logs = work / "logs"
    logs.mkdir()
    uri = "models:/clazzify@champion"
    if "clazzify" in systems:
        port = free_port()
        v1 = [("/v1/models/clazzify:predict",
               json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode(),
               {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
              for p in photos]
        results["clazzify"] = run_system("clazzify", lambda: start(
            [sys.executable, "-m", "serving", "--model-uri", uri, "--http-port", str(port)],
            port, "/v2/health/ready", env, logs / "clazzify.log"), port, v1, levels, args.seconds)
    if "flask" in systems:
        port = free_port()
        raw = [("/predict", p, {"Content-Type": "application/octet-stream"}) for p in photos]
        results["flask"] = run_system("flask", lambda: start(
            [sys.executable, str(ROOT / "benchmarks" / "flask_baseline.py"), str(bundle),
             str(port)],
            port, "/health", env, logs / "flask.log"), port, raw, levels, args.seconds)
    if "mlflow" in systems:
        port = free_port()
        pixels = [("/invocations", json.dumps({"inputs": a[np.newaxis].tolist()}).encode(),
                   {"Content-Type": "application/json"}) for a in arrays]
        results["mlflow"] = run_system("mlflow", lambda: start(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager",
             "local", "--host", "127.0.0.1", "--port", str(port)],
            port, "/ping", env, logs / "mlflow.log"), port, pixels, levels, args.seconds)

    args.out = args.out or work / "serving.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    if {"clazzify", "flask", "mlflow"} <= set(systems):
        print(markdown(results, levels))
        print()
        for name, value in ratios(results, levels).items():
            print(f"- {name}: {value:.2f}")
    print(f"\ndecode (image_to_array) {results['decode_ms_per_image']:.2f} ms/image; "
          f"engine by batch: " + ", ".join(f"{b}: {r['images_per_s']:.0f}/s"
                                           for b, r in results["engine"]["by_batch"].items()))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
