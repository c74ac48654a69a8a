"""Scoring workers end to end against the model server's own throughput, in one run.

    python benchmarks/worker.py [--architecture mobilenet_v2] [--image-size 224]
                                [--photos /work/shared/datasets/restaurant-photos]
                                [--n-events 384] [--batch-size 32] [--rounds 2]
                                [--db postgresql|sqlite]

One model server (``python -m serving``, ONNX Runtime, API key) and the same real photos
for every measurement, on this machine:

- server: the limit. A closed loop of V2 binary requests of ``--batch-size`` photos
  (bytes already in memory, the worker's own HTTP client), 1 and 2 requests in flight;
  the best of the two is the server's throughput.
- worker x1 / x2: ``clazzify worker`` processes consuming a RabbitMQ queue into a fresh
  PostgreSQL database (or SQLite): the queue is published once the workers are
  consuming, and the clock runs from the first publish until the database holds every
  score. Each event is a real photo read from its file, sent to the same server,
  committed, then acknowledged.

Rounds rotate the order of the systems; the medians are reported, and the worker's ratio
is the median of per-round ratios (worker / that round's best server figure), because
this 2-core machine is shared and its load moves between measurements. The model's
weights are random (speed does not depend on them). Prints a Markdown table and writes
JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "benchmark-key-0123456789abcdef"
PHOTOS = Path("/work/shared/datasets/restaurant-photos")
PG_ADMIN = os.environ.get("CLAZZIFY_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("CLAZZIFY_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
VERSION = "bench-1"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundle(work: Path, architecture: str, image_size: int) -> Path:
    """An untrained model of the chosen architecture, exported as training exports it."""
    from clazzify.bundle import BundleMeta, export_bundle
    from clazzify.models import ModelSpec, build_model

    classes = ["ambiance", "food", "human", "menu"]
    model = build_model(ModelSpec(architecture, len(classes), image_size, augment=True))
    meta = BundleMeta(classes, image_size, architecture, "benchmark", "benchmark")
    return export_bundle(model, meta, work / "bundle")


def pick_photos(folder: Path, n: int, seed: int) -> list[Path]:
    files = sorted(p for p in folder.rglob("*")
                   if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not files:
        raise SystemExit(f"no photos under {folder}: pass --photos DIR")
    random.Random(seed).shuffle(files)
    return files[:n]


def start_server(bundle: Path, work: Path) -> tuple[subprocess.Popen, str]:
    from clazzify.endpoint_client import EndpointClient, EndpointConfig

    port = free_port()
    keys = work / "api-keys"
    keys.write_text(KEY + "\n")
    logfile = work / "server.log"
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving", "--model-uri", str(bundle), "--http-port", str(port),
             "--api-keys-file", str(keys), "--model-version", VERSION],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
    url = f"http://127.0.0.1:{port}"
    client = EndpointClient(EndpointConfig(url, api_key=KEY))
    deadline = time.monotonic() + 240
    while not client.ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"model server did not start: {logfile.read_text()[-2000:]}")
        time.sleep(0.5)
    client.close()
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure_server(url: str, blobs: Sequence[bytes], batch: int, concurrency: int,
                   seconds: float) -> float:
    """Images/s of a closed loop of ``concurrency`` clients sending ``batch`` photos each."""
    from clazzify.endpoint_client import EndpointClient, EndpointConfig

    batches = [list(blobs[i : i + batch]) for i in range(0, len(blobs) - batch + 1, batch)]
    done = [0] * concurrency
    stop_at = time.monotonic() + seconds
    errors: list[Exception] = []

    def run(idx: int) -> None:
        with EndpointClient(EndpointConfig(url, api_key=KEY, timeout_s=120)) as client:
            k = idx
            while time.monotonic() < stop_at:
                try:
                    client.infer(batches[k % len(batches)])
                except Exception as e:  # noqa: BLE001 - report, do not hide
                    errors.append(e)
                    return
                done[idx] += len(batches[k % len(batches)])
                k += concurrency

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"server measurement failed: {errors[0]}")
    return sum(done) / (time.monotonic() - started)


def create_database(kind: str, work: Path) -> tuple[str, callable]:
    if kind == "sqlite":
        path = work / f"scores-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: None
    import psycopg

    name = f"clazzify_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0]

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{base}/{name}", drop


def count_scores(db_url: str) -> int:
    import sqlalchemy as sa

    from clazzify.scores import create_db_engine

    engine = create_db_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.scalar(sa.text("SELECT count(*) FROM scores")))
    except sa.exc.SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def measure_workers(url: str, paths: Sequence[Path], n_events: int, workers: int, batch: int,
                    db_kind: str, work: Path, timeout: float = 240.0) -> dict:
    """Images/s from the first publish until every event's score is committed."""
    import pika
    import sqlalchemy as sa

    from clazzify.scores import ScoreRepository, create_db_engine

    db_url, drop = create_database(db_kind, work)
    ScoreRepository.open(db_url).close()  # migrate once, outside the measurement
    queue = f"clazzify.bench.{uuid.uuid4().hex[:8]}"
    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    channel.confirm_delivery()
    procs, logs = [], []
    try:
        for i in range(workers):
            logfile = work / f"{queue}-{i}.log"
            logs.append(logfile)
            with logfile.open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "clazzify.cli", "worker", "--endpoint", url,
                     "--api-key", KEY, "--db", db_url, "--queue", queue, "--amqp-url", AMQP_URL,
                     "--batch-size", str(batch), "--log-format", "json"],
                    stdout=out, stderr=subprocess.STDOUT, cwd=ROOT))
        deadline = time.monotonic() + 120
        while not all("consuming" in f.read_text(errors="replace") for f in logs):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start: {logs[0].read_text()[-2000:]}")
            time.sleep(0.2)
        bodies = [json.dumps({"image_id": f"e{i:05d}", "uri": str(paths[i % len(paths)]),
                              "restaurant_id": f"r{i % 7}", "source": "benchmark"}).encode()
                  for i in range(n_events)]
        engine = create_db_engine(db_url)
        started = time.monotonic()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        published = time.monotonic() - started
        count = 0
        with engine.connect() as db:
            while count < n_events:
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"only {count}/{n_events} scored after {timeout}s")
                time.sleep(0.05)
                count = int(db.scalar(sa.text("SELECT count(*) FROM scores")))
                db.commit()
        elapsed = time.monotonic() - started
        engine.dispose()
        return {"images_per_s": n_events / elapsed, "seconds": elapsed,
                "publish_s": published, "events": n_events}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        channel.queue_delete(queue)
        channel.queue_delete(f"{queue}.dead")
        conn.close()
        drop()


def markdown(summary: dict) -> str:
    server = summary["server_images_per_s"]
    lines = [
        "| system | images/s (median) | rounds | vs server |",
        "|---|---:|---|---:|",
    ]
    for name, row in summary["systems"].items():
        ratio = row["median"] / server if server else 0.0
        rounds = ", ".join(f"{v:.1f}" for v in row["rounds"])
        lines.append(f"| {name} | {row['median']:.1f} | {rounds} | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--n-photos", type=int, default=256)
    parser.add_argument("--n-events", type=int, default=384,
                        help="Events per worker measurement (photos repeat under new ids).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="Seconds per server-only measurement.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--db", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="clazzify-worker-bench-"))
    log(f"building a {args.architecture} bundle at {args.image_size} px in {work}")
    bundle = build_bundle(work, args.architecture, args.image_size)
    paths = pick_photos(args.photos, args.n_photos, seed=0)
    blobs = [p.read_bytes() for p in paths]
    log(f"{len(paths)} photos from {args.photos}, {sum(map(len, blobs)) / 1e6:.1f} MB")
    proc, url = start_server(bundle, work)
    results: dict[str, list[float]] = {"server, 1 request in flight": [],
                                       "server, 2 requests in flight": [],
                                       "worker x1": [], "worker x2": []}
    details: list[dict] = []
    ratios: dict[str, list[float]] = {"worker x1": [], "worker x2": []}
    loads = [os.getloadavg()[0]]

    def server_cell(c: int) -> float:
        return measure_server(url, blobs, args.batch_size, c, args.seconds)

    def worker_cell(w: int) -> float:
        d = measure_workers(url, paths, args.n_events, w, args.batch_size, args.db, work)
        details.append({"workers": w, **d})
        return d["images_per_s"]

    cells = [("server, 1 request in flight", lambda: server_cell(1)),
             ("worker x1", lambda: worker_cell(1)),
             ("server, 2 requests in flight", lambda: server_cell(2)),
             ("worker x2", lambda: worker_cell(2))]
    try:
        measure_server(url, blobs, args.batch_size, 1, 3.0)  # warm-up
        for r in range(args.rounds):
            # Rotate the order each round so no system always runs first or last.
            order = cells[r % len(cells):] + cells[: r % len(cells)]
            this_round = {}
            for name, cell in order:
                this_round[name] = cell()
                results[name].append(this_round[name])
                log(f"round {r + 1}: {name}: {this_round[name]:.1f} images/s")
            best = max(this_round["server, 1 request in flight"],
                       this_round["server, 2 requests in flight"])
            for name in ratios:
                ratios[name].append(this_round[name] / best)
            loads.append(os.getloadavg()[0])
    finally:
        stop(proc)
    systems = {k: {"median": statistics.median(v), "rounds": v} for k, v in results.items()}
    server = max(systems["server, 1 request in flight"]["median"],
                 systems["server, 2 requests in flight"]["median"])
    summary = {
        "architecture": args.architecture, "image_size": args.image_size,
        "batch_size": args.batch_size, "db": args.db, "photos": len(paths),
        "n_events": args.n_events, "cpus": os.cpu_count(),
        "server_images_per_s": server, "systems": systems, "worker_runs": details,
        "worker1_vs_server": statistics.median(ratios["worker x1"]),
        "worker2_vs_server": statistics.median(ratios["worker x2"]),
        "round_ratios": ratios, "load_average_1min": loads,
    }
    print(markdown(summary))
    print(f"\nper round, one worker reaches {summary['worker1_vs_server']:.0%} (median) of the "
          f"server's best throughput of that round (target >= 70%); two reach "
          f"{summary['worker2_vs_server']:.0%}. Rounds: "
          f"{', '.join(f'{v:.2f}' for v in ratios['worker x1'])} (x1), "
          f"{', '.join(f'{v:.2f}' for v in ratios['worker x2'])} (x2). "
          f"1-min load average {', '.join(f'{v:.1f}' for v in loads)} on {os.cpu_count()} CPUs")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
