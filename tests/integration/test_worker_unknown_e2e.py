"""The unknown route end to end: a worker process, RabbitMQ, PostgreSQL, HTTP and /metrics.

The model server here is a small HTTP server that speaks the V2 binary protocol and the
out-of-distribution contract of issue 22 (``label`` = ``unknown`` for a flagged photo, an
FP32 ``in_distribution_score`` output, probabilities over the classes only): it decodes
each photo with the project's own ``image_to_array`` and flags the grey ones. It stands in
for the model server until the server ships its score (tests/integration/test_serving_*
then cover the server's side); every other part is the real one: the ``clazzify worker``
process, the broker, the database, the ``/metrics`` endpoint and ``clazzify images``.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving_support import metric_value
from worker_support import Queues, WorkerProcess, fresh_pg_database, query, score_count, wait_for

from clazzify.core.imaging import image_to_array
from clazzify.core.v2codec import unpack_bytes_tensor

pytestmark = pytest.mark.integration

CLASSES = ["ambiance", "food", "human", "menu"]
VERSION = "ood-3"
THRESHOLD = 0.05  # in_distribution_score: spread of the channel means; grey photos score 0


class _ContractServer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        if length > 20_000_000:
            self.send_error(413)
            return
        body = self.rfile.read(length)
        head = int(self.headers["Inference-Header-Content-Length"])
        images = unpack_bytes_tensor(body[head:], "image")
        probs, scores = [], []
        for data in images:
            pixels = image_to_array(data, 32).astype(np.float32) / 255.0
            means = pixels.mean(axis=(0, 1))
            logits = np.array([means[0], means[1], means[2], 1.0 - means.mean()]) * 4
            probs.append(np.exp(logits) / np.exp(logits).sum())
            scores.append(float(means.max() - means.min()))
        labels = ["unknown" if s < THRESHOLD else CLASSES[int(np.argmax(p))]
                  for p, s in zip(probs, scores, strict=True)]
        n = len(images)
        doc = {
            "model_name": "clazzify", "model_version": VERSION, "id": "r",
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels},
                {"name": "probabilities", "datatype": "FP32", "shape": [n, 4],
                 "data": np.asarray(probs, dtype=np.float32).reshape(-1).tolist()},
                {"name": "class_names", "datatype": "BYTES", "shape": [4], "data": CLASSES},
                {"name": "in_distribution_score", "datatype": "FP32", "shape": [n], "data": scores},
            ],
        }
        out = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def contract_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ContractServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _photos(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    colours = {"red": (210, 30, 30), "green": (20, 190, 40), "blue": (30, 40, 220),
               "grey": (120, 120, 120), "white": (250, 250, 250), "black": (5, 5, 5)}
    out = {}
    for name, colour in colours.items():
        buf = io.BytesIO()
        Image.new("RGB", (48, 48), colour).save(buf, format="PNG")
        out[name] = root / f"{name}.png"
        out[name].write_bytes(buf.getvalue())
    return out


def test_flagged_photos_are_stored_counted_and_listed_apart(contract_server: str, tmp_path: Path) -> None:
    from serving_support import free_port

    photos = _photos(tmp_path / "photos")
    queues = Queues()
    metrics_port = free_port()
    try:
        with fresh_pg_database() as db_url:
            queues.publish([json.dumps({"image_id": n, "uri": str(p), "restaurant_id": "r1"}).encode()
                            for n, p in photos.items()])
            worker = WorkerProcess(
                ["--endpoint", contract_server, "--db", db_url, "--queue", queues.name,
                 "--amqp-url", queues.amqp_url, "--metrics-port", str(metrics_port),
                 "--batch-size", "4"],
                tmp_path / "worker.log", env={"CLAZZIFY_ALLOWED_SOURCES": str(tmp_path)},
            )
            try:
                wait_for(lambda: score_count(db_url) == len(photos), 60, "every photo scored")
                rows = dict((i, (u, s)) for i, u, s in query(
                    db_url, "SELECT image_id, unknown, in_distribution_score FROM scores"))
                assert {i for i, (u, _) in rows.items() if u} == {"grey", "white", "black"}
                assert rows["grey"][1] == pytest.approx(0.0) and rows["red"][1] > THRESHOLD

                def metrics() -> str:
                    url = f"http://127.0.0.1:{metrics_port}/metrics"
                    with urllib.request.urlopen(url, timeout=5) as r:
                        return r.read().decode()

                name = "clazzify_worker_predictions_total"
                wait_for(lambda: metric_value(metrics(), name, model_version=VERSION, label="unknown") == 3,
                         10, "the unknown counter")
                text = metrics()
                by_class = {c: metric_value(text, name, model_version=VERSION, label=c) for c in CLASSES}
                assert sum(by_class.values()) == 3 and all(v is not None for v in by_class.values())
                assert metric_value(text, "clazzify_worker_confidence_count", model_version=VERSION) == 6
            finally:
                worker.stop()

            def cli(*args: str) -> list[dict]:
                done = subprocess.run([sys.executable, "-m", "clazzify.cli", "images", *args, "--db", db_url,
                                       "--format", "json"], capture_output=True, text=True, timeout=60)
                assert done.returncode == 0, done.stderr
                return json.loads(done.stdout)

            assert {r["image_id"] for r in cli("--unknown")} == {"grey", "white", "black"}
            listed = {r["image_id"] for c in CLASSES for r in cli("--restaurant", "r1", "--label", c)}
            assert listed == {"red", "green", "blue"}
    finally:
        queues.close()
