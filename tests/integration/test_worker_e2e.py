"""The scoring worker end to end on real services.

RabbitMQ and PostgreSQL on this machine, the real model server (``python -m serving``
with the ``tiny_bundle``) over HTTP, moto's S3 server for S3 event notifications, and
the worker as a real process. Every functional test runs on PostgreSQL and on the
SQLite default.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from serving_support import KEY, free_port, metric_value, running_server
from worker_support import (
    Queues,
    TcpProxy,
    WorkerProcess,
    fresh_pg_database,
    query,
    s3_server,
    score_count,
    via_port,
    wait_for,
)

pytestmark = pytest.mark.integration

VERSION = "itest-7"


@pytest.fixture(scope="module")
def server_url(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    log = tmp_path_factory.mktemp("model-server") / "server.log"
    args = ["--model-uri", str(tiny_bundle), "--model-version", VERSION, "--max-latency-ms", "2"]
    with running_server(args, log, keys=KEY) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def photos(demo_dir: Path) -> list[Path]:
    """The good synthetic photos (the demo set's deliberately bad files left out)."""
    return sorted(p for p in demo_dir.rglob("*") if p.is_file() and "-bad-" not in p.name)


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/scores.db"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def spawn(tmp_path: Path, demo_dir: Path):
    """Start ``clazzify worker`` processes; every one still running is killed at teardown.

    They may read the test's folder, the demo set and the ``uploads`` bucket (the
    allow-list, ``CLAZZIFY_ALLOWED_SOURCES``) unless ``env`` says otherwise.
    """
    started: list[WorkerProcess] = []

    def start(args: list[str], name: str = "worker", env: dict[str, str] | None = None):
        allowed = {"CLAZZIFY_ALLOWED_SOURCES": f"{tmp_path},{demo_dir},s3://uploads"}
        worker = WorkerProcess(args, tmp_path / f"{name}.log", env={**allowed, **(env or {})})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def queues() -> Queues:
    q = Queues()
    yield q
    q.close()


def plain(image_id: str, path: Path, **extra: object) -> bytes:
    return json.dumps({"image_id": image_id, "uri": str(path), **extra}).encode()


def worker_args(endpoint: str, db_url: str, queues: Queues, *extra: str) -> list[str]:
    return [
        "--endpoint",
        endpoint,
        "--api-key",
        KEY,
        "--db",
        db_url,
        "--queue",
        queues.name,
        "--amqp-url",
        queues.amqp_url,
        "--timeout",
        "10",
        "--max-retry-delay",
        "2",
        *extra,
    ]


def scores(db_url: str) -> list[tuple]:
    return query(db_url, "SELECT image_id, model_version, writes FROM scores ORDER BY image_id")


def test_end_to_end_plain_and_s3_events(
    spawn, server_url: str, db_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    from clazzify.core import storage

    with s3_server(tmp_path / "moto.log") as s3_env:
        settings = storage.S3Settings.from_env(s3_env)
        s3 = storage.client(settings)
        s3.make_bucket("uploads")
        for i, path in enumerate(photos[:10]):
            s3.fput_object("uploads", f"r1/photo {i}.{path.suffix[1:]}", str(path))
        notifications = [
            json.dumps(
                {
                    "EventName": "s3:ObjectCreated:Put",
                    "Key": f"uploads/r1/photo {i}",
                    "Records": [
                        {
                            "eventVersion": "2.0",
                            "eventSource": "minio:s3",
                            "eventName": "s3:ObjectCreated:Put",
                            "s3": {
                                "bucket": {"name": "uploads"},
                                "object": {
                                    "key": f"r1/photo+{i}.{path.suffix[1:]}",
                                    "size": path.stat().st_size,
                                    "userMetadata": {"X-Amz-Meta-Restaurant-Id": "r1"},
                                },
                            },
                        }
                    ],
                }
            ).encode()
            for i, path in enumerate(photos[:10])
        ]
        plains = [
            plain(f"local-{i}", p, restaurant_id="r2", source="app")
            for i, p in enumerate(photos[10:40])
        ]
        queues.publish(notifications + plains)

        worker = spawn(
            worker_args(server_url, db_url, queues, "--idle-exit", "2", "--batch-size", "8"),
            "worker",
            env=s3_env,
        )
        assert worker.wait(timeout=90) == 0, worker.log()

    rows = scores(db_url)
    assert len(rows) == 40
    assert {v for _, v, _ in rows} == {VERSION}
    assert {w for _, _, w in rows} == {1}
    assert query(
        db_url,
        "SELECT count(*) FROM images WHERE restaurant_id = 'r1' "
        "AND image_id LIKE 's3://uploads/r1/photo %'",
    ) == [(10,)]
    assert query(db_url, "SELECT count(*) FROM score_probabilities") == [(40 * 4,)]
    assert queues.depth() == 0 and queues.dead_letters() == []
    logged = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert sum(e.get("scored", 0) for e in logged if e["message"].startswith("batch:")) == 40


def test_sigkill_mid_run_then_restart_scores_each_event_exactly_once(
    spawn, server_url: str, db_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    n = 320
    queues.publish([plain(f"p{i:03d}", photos[i % len(photos)]) for i in range(n)])
    args = worker_args(server_url, db_url, queues, "--batch-size", "4", "--prefetch", "8")
    first = spawn(args, "worker1")
    # Poll tightly: on a quiet machine the tiny test model scores a batch in milliseconds,
    # and a 0.2 s poll once saw the first worker finish all 160 events before the kill.
    wait_for(lambda: score_count(db_url) >= 12, 60, "the first scores", interval=0.005)
    first.kill()  # SIGKILL: no chance to ack or clean up
    done_before = score_count(db_url)
    assert done_before < n, "the worker finished before it could be killed: raise n"

    second = spawn([*args, "--idle-exit", "2"], "worker2")
    assert second.wait(timeout=120) == 0, second.log()
    rows = scores(db_url)
    assert [r[0] for r in rows] == [f"p{i:03d}" for i in range(n)]  # none missing, none twice
    assert {r[1] for r in rows} == {VERSION}
    assert queues.depth() == 0 and queues.dead_letters() == []


def test_sigterm_finishes_the_batch_in_flight_and_loses_nothing(
    spawn, server_url: str, db_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    # Enough events, and a quick enough poll, that the worker is still busy when the signal
    # lands: on an idle machine 200 events were all scored within one 0.2 s poll.
    n = 640
    queues.publish([plain(f"p{i:03d}", photos[i % len(photos)]) for i in range(n)])
    worker = spawn(worker_args(server_url, db_url, queues, "--batch-size", "4"), "worker")
    wait_for(lambda: score_count(db_url) >= 8, 60, "the first scores", interval=0.005)
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, worker.log()
    scored = score_count(db_url)
    # Everything committed was acknowledged and everything else went back to the queue.
    wait_for(lambda: queues.depth() == n - scored, 10, "the unacknowledged messages to return")
    assert scored < n
    assert {r[2] for r in scores(db_url)} == {1}


def test_poison_messages_go_to_the_dead_letter_queue_with_a_reason(
    spawn,
    server_url: str,
    db_url: str,
    queues: Queues,
    photos: list[Path],
    demo_dir: Path,
    tmp_path: Path,
) -> None:
    truncated = demo_dir / "food" / "synthetic-bad-truncated.jpg"
    text = demo_dir / "food" / "synthetic-bad-notes.jpg"
    bodies = [
        plain("good-0", photos[0]),
        b"{this is not json",
        plain("missing", tmp_path / "no-such-photo.jpg"),
        plain("good-1", photos[1]),
        plain("not-an-image", text),
        plain("truncated", truncated),
        json.dumps({"hello": "world"}).encode(),
        plain("good-2", photos[2]),
    ]
    queues.publish(bodies)
    worker = spawn(worker_args(server_url, db_url, queues, "--idle-exit", "2"), "worker")
    assert worker.wait(timeout=60) == 0, worker.log()

    assert [r[0] for r in scores(db_url)] == ["good-0", "good-1", "good-2"]
    dead = queues.dead_letters()
    reasons = sorted(h["x-clazzify-reason"] for h, _ in dead)
    assert reasons == sorted(
        ["bad_json", "missing_object", "invalid_image", "invalid_image", "bad_event"]
    )
    assert {body for _, body in dead} == {b for i, b in enumerate(bodies) if i not in (0, 3, 7)}
    assert all(h["x-clazzify-detail"] and h["x-clazzify-queue"] == queues.name for h, _ in dead)
    recorded = query(db_url, "SELECT reason, image_id FROM dead_letters ORDER BY id")
    assert sorted(r for r, _ in recorded) == reasons
    assert ("invalid_image", "truncated") in recorded
    assert queues.depth() == 0


def test_endpoint_down_for_a_while_loses_nothing(
    spawn, server_url: str, db_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    host_port = server_url.removeprefix("http://").split(":")
    proxy = TcpProxy(host_port[0], int(host_port[1]))
    proxy.cut()  # the endpoint is down before the worker starts
    n = 40
    queues.publish([plain(f"p{i:02d}", photos[i]) for i in range(n)])
    metrics_port = free_port()
    worker = spawn(
        worker_args(
            f"http://127.0.0.1:{proxy.port}",
            db_url,
            queues,
            "--batch-size",
            "8",
            "--metrics-port",
            str(metrics_port),
        )
    )

    def metric(name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            return metric_value(r.read().decode(), name, **labels) or 0.0

    try:
        wait_for(lambda: "endpoint_unavailable" in worker.log(), 30, "a failed inference")
        time.sleep(3)
        assert score_count(db_url) == 0
        assert queues.depth() == n - 24  # 24 (the prefetch) held unacknowledged, none dropped
        retried = metric("clazzify_worker_messages_retried_total", reason="endpoint_unavailable")
        assert retried >= 16  # both batches in flight failed and wait for a retry
        proxy.restore()
        wait_for(lambda: score_count(db_url) == n, 60, "every event to be scored")
        assert queues.dead_letters() == []
        wait_for(
            lambda: metric("clazzify_worker_images_scored_total", model_version=VERSION) == n,
            10,
            "the scored counter",
        )
    finally:
        proxy.close()
    assert {r[2] for r in scores(db_url)} == {1}


def test_database_unreachable_for_a_while_loses_nothing(
    spawn, server_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    proxy = TcpProxy("127.0.0.1", 5432)
    with fresh_pg_database() as db_url:
        proxied = via_port(db_url, proxy.port)
        n = 60
        worker = spawn(worker_args(server_url, proxied, queues, "--batch-size", "4"), "worker")
        try:
            queues.publish([plain(f"p{i:02d}", photos[i % len(photos)]) for i in range(n // 3)])
            wait_for(lambda: score_count(db_url) == n // 3, 60, "the first third")
            proxy.cut()  # the database goes away mid-run
            queues.publish([plain(f"p{i:02d}", photos[i % len(photos)]) for i in range(n // 3, n)])
            wait_for(lambda: "db_unavailable" in worker.log(), 30, "a failed commit")
            time.sleep(3)
            assert score_count(db_url) == n // 3
            proxy.restore()
            wait_for(lambda: score_count(db_url) == n, 90, "every event to be scored")
        finally:
            proxy.close()
        rows = scores(db_url)
        assert [r[0] for r in rows] == [f"p{i:02d}" for i in range(n)]
        assert queues.depth() == 0 and queues.dead_letters() == []


def test_worker_refuses_a_bad_endpoint_url(
    spawn, db_url: str, queues: Queues, tmp_path: Path
) -> None:
    worker = spawn(["--endpoint", "localhost:8080", "--db", db_url, "--queue", queues.name])
    assert worker.wait(timeout=30) != 0
    assert "must start with http:// or https://" in worker.log()


def clazzify(*args: str) -> str:
    """Run the clazzify CLI; its stdout (fails the test on a non-zero exit)."""
    done = subprocess.run(
        [sys.executable, "-m", "clazzify.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_backfill_resumes_and_the_query_commands_read_it(
    server_url: str, db_url: str, photos: list[Path], demo_dir: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "collection.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uri", "image_id", "restaurant_id"])
        for i, path in enumerate(photos[:24]):
            writer.writerow([str(path), f"c{i:02d}", "r1" if i % 2 else "r2"])
        writer.writerow([str(demo_dir / "food" / "synthetic-bad-notes.jpg"), "bad", "r1"])
    common = ["--endpoint", server_url, "--api-key", KEY, "--db", db_url]

    first = clazzify("score", "--source", str(manifest), *common, "--no-progress")
    assert "listed 25, already scored 0, scored 24, failed 1 (invalid_image=1)" in first
    assert f"v{VERSION}" in first
    second = clazzify("score", "--source", str(manifest), *common, "--no-progress")
    assert "listed 25, already scored 24, scored 0, failed 1" in second
    assert len(scores(db_url)) == 24

    shots = json.loads(
        clazzify(
            "images", "--restaurant", "r1", "--label", "food", "--db", db_url, "--format", "json"
        )
    )
    labels = dict(
        query(
            db_url,
            "SELECT s.image_id, s.label FROM scores s JOIN images i "
            "ON i.image_id = s.image_id WHERE i.restaurant_id = 'r1'",
        )
    )
    assert sorted(r["image_id"] for r in shots) == sorted(
        k for k, v in labels.items() if v == "food"
    )
    probs = [r["probability"] for r in shots]
    assert probs == sorted(probs, reverse=True)

    queue = json.loads(
        clazzify(
            "review-queue",
            "--labels",
            "human,menu",
            "--min-prob",
            "0",
            "--db",
            db_url,
            "--format",
            "json",
        )
    )
    assert {r["queue"] for r in queue} == {"human", "menu"} and len(queue) == 2 * 24

    export = tmp_path / "relabel.csv"
    clazzify("relabel-export", "-o", str(export), "--max-prob", "1.01", "--db", db_url)
    with export.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24
    for row in rows[:5]:
        row["corrected_label"] = "menu"
    with export.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "manifest.csv"
    said = clazzify(
        "relabel-import", str(export), "-o", str(out), "--record-labels", "--db", db_url
    )
    assert "5 labelled photos" in said
    from clazzify.training.ingest import read_manifest

    assert [i.label for i in read_manifest(str(out))] == ["menu"] * 5
    assert query(db_url, "SELECT count(*) FROM manual_labels")[0][0] == 5


def test_enqueue_feeds_the_worker(
    spawn, server_url: str, db_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "uploads"
    folder.mkdir()
    for path in photos[:6]:
        (folder / path.name).write_bytes(path.read_bytes())
    said = clazzify("enqueue", str(folder), "--queue", queues.name, "--amqp-url", queues.amqp_url,
                    "--restaurant", "R")
    assert f"published 6 upload events to {queues.name}" in said
    worker = spawn(worker_args(server_url, db_url, queues, "--idle-exit", "2"), "worker")
    assert worker.wait(timeout=60) == 0, worker.log()
    assert [r[0] for r in scores(db_url)] == sorted(str(p.resolve()) for p in folder.iterdir())
    assert query(db_url, "SELECT DISTINCT source, restaurant_id FROM images") == [("enqueue", "R")]
    # docs/scoring.md's quick start: enqueue --restaurant R, then images --restaurant R.
    for label in ("ambiance", "food", "human", "menu"):
        listed = json.loads(clazzify("images", "--restaurant", "R", "--label", label, "--db",
                                     db_url, "--format", "json"))
        assert len(listed) == sum(1 for (lbl,) in query(db_url, "SELECT label FROM scores")
                                  if lbl == label)


def test_worker_fails_fast_on_a_database_that_does_not_exist(
    spawn, server_url: str, queues: Queues
) -> None:
    missing = f"postgresql://postgres@127.0.0.1:5432/clazzify_missing_{queues.name[-10:]}"
    worker = spawn(worker_args(server_url, missing, queues))
    assert worker.wait(timeout=30) != 0
    assert "does not exist" in worker.log() and "createdb" in worker.log()


#: The worker pod's memory limit (manifests/base/worker.yaml: limits.memory 1Gi).
POD_LIMIT_BYTES = 1024**3
#: What the worker may peak at here: the interpreter and its libraries (about 80 MiB) plus
#: batch x limit of photo bytes (8 x 2 MB), with room to spare; far below the pod's limit and
#: the 2 GB file it is shown (an unbounded read held 2,180 MB).
RSS_BOUND_BYTES = 256 * 1024**2


@pytest.mark.slow
def test_hostile_events_are_dead_lettered_at_once_and_memory_stays_bounded(
    spawn, server_url: str, queues: Queues, photos: list[Path], tmp_path: Path
) -> None:
    """One event must not sink a worker: a 2 GB (sparse) file, a FIFO, an http:// URI,
    a missing bucket, a bucket or folder outside the allow-list, a missing object and an
    image id that belongs to another photo are each dead-lettered with their reason within
    seconds; the real photos around them are all scored, and the worker's peak RSS stays
    under a bound below the pod's limit."""
    assert RSS_BOUND_BYTES < POD_LIMIT_BYTES
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    local = []
    for i, path in enumerate(photos[:12]):
        local.append(uploads / f"real-{i}{path.suffix}")
        local[-1].write_bytes(path.read_bytes())
    huge = uploads / "huge.jpg"
    with huge.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # 2 GB that takes no disk: a sparse file
    fifo = uploads / "pipe.jpg"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    outside = tmp_path / "private" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes(photos[0].read_bytes())
    (uploads / "link.jpg").symlink_to(outside)

    with s3_server(tmp_path / "moto.log") as s3_env, fresh_pg_database() as db_url:
        from clazzify.core import storage

        s3 = storage.client(storage.S3Settings.from_env(s3_env))
        for bucket in ("uploads", "mlflow"):
            s3.make_bucket(bucket)
        for i, path in enumerate(photos[12:16]):
            s3.fput_object("uploads", f"r1/{i}.jpg", str(path))
        s3.put_object("uploads", "r1/big.jpg", io.BytesIO(b"\xff" * 3_000_000), 3_000_000)
        s3.fput_object("mlflow", "models/m.jpg", str(photos[0]))

        env = {**s3_env, "CLAZZIFY_ALLOWED_SOURCES": f"{uploads},s3://uploads,s3://ghost"}
        args = worker_args(server_url, db_url, queues, "--batch-size", "8",
                           "--max-image-bytes", "2000000", "--idle-exit", "4")
        worker = spawn(args, "worker", env=env)

        # The first photo is scored under its id before anyone reuses that id.
        queues.publish([plain("taken", local[0])])
        wait_for(lambda: score_count(db_url) == 1, 60, "the first photo")

        hostile = {
            "huge": (plain("huge", huge), "too_large"),
            "fifo": (plain("fifo", fifo), "not_a_file"),
            "http": (plain("http", "http://127.0.0.1:9/x.jpg"), "unsupported_scheme"),
            "ghost": (plain("ghost", "s3://ghost/r1/x.jpg"), "unknown_bucket"),
            "gone": (plain("gone", "s3://uploads/r1/gone.jpg"), "missing_object"),
            "big": (plain("big", "s3://uploads/r1/big.jpg"), "too_large"),
            "mlflow": (plain("mlflow", "s3://mlflow/models/m.jpg"), "source_not_allowed"),
            "passwd": (plain("passwd", "/etc/passwd"), "source_not_allowed"),
            "link": (plain("link", uploads / "link.jpg"), "source_not_allowed"),
            "conflict": (plain("taken", local[1]), "id_conflict"),
        }
        real = [plain(f"local-{i}", p) for i, p in enumerate(local[2:])] + [
            plain(f"s3-{i}", f"s3://uploads/r1/{i}.jpg") for i in range(4)
        ]
        bodies = [body for body, _ in hostile.values()]
        mixed = [m for i in range(len(real)) for m in real[i : i + 1] + bodies[i : i + 1]]
        assert len(mixed) == len(real) + len(bodies)  # hostile events between real photos
        started = time.monotonic()
        queues.publish(mixed)

        dead: dict[str, tuple[str, float]] = {}

        def all_dead() -> bool:
            for headers, body in queues.dead_letters():
                dead[json.loads(body)["uri"]] = (headers["x-clazzify-reason"],
                                                 time.monotonic() - started)
            return len(dead) >= len(hostile)

        wait_for(all_dead, 60, "every hostile event in the dead-letter queue", interval=0.05)
        wait_for(lambda: score_count(db_url) == 1 + len(real), 60, "the real photos")
        peak_rss = worker.peak_rss()  # everything is done; the worker idles before it exits
        assert worker.wait(timeout=60) == 0, worker.log()

        slowest = max(seconds for _, seconds in dead.values())
        print(f"\nhostile events: slowest dead letter {slowest:.2f}s after publishing; worker "
              f"peak RSS {peak_rss / 1024**2:.0f} MiB (bound {RSS_BOUND_BYTES / 1024**2:.0f})")
        expected = {json.loads(body)["uri"]: reason for body, reason in hostile.values()}
        assert {uri: reason for uri, (reason, _) in dead.items()} == expected
        assert slowest < 15, dead
        ids = [r[0] for r in query(db_url, "SELECT image_id FROM scores ORDER BY image_id")]
        assert ids == sorted(["taken", *(f"local-{i}" for i in range(10)),
                              *(f"s3-{i}" for i in range(4))])
        taken = query(db_url, "SELECT uri FROM images WHERE image_id = 'taken'")
        assert taken == [(str(local[0]),)]
        assert sorted(r for (r,) in query(db_url, "SELECT reason FROM dead_letters")) == sorted(
            expected.values()
        )
        assert queues.depth() == 0
    assert peak_rss < RSS_BOUND_BYTES, f"peak RSS {peak_rss / 1024**2:.0f} MiB"
