"""Review page: server time of a 100-photo queue page on 1M score rows, thumbnails per core.

1. A synthetic PostgreSQL database (``clazzify_review_bench``, made with generate_series):
   ``--photos`` photos scored by two model versions (2 x 500k = 1M ``scores`` rows by
   default), 5,000 restaurants, 3 sources, 5% of the photos already labelled.
2. ``clazzify review-ui`` runs on it as a child process; a logged-in client GETs each queue
   page over loopback HTTP (``--repeat`` times, after one warm-up) and records the wall time
   of each (SQL + rendering + HTTP: an upper bound on the server's time).
3. Baseline, in the same run: the same 100 rows read the way ``clazzify review-queue`` and
   ``relabel-export`` read them, through the 0001 views (``latest_scores`` ranks every score
   with a window function) with ``ORDER BY ... OFFSET``.
4. Thumbnails: ``make_thumbnail`` on one thread (one core) over real photos from
   ``../shared`` (or drawn ones if absent): cold (read + decode + resize + encode) and
   cached (disk cache hit).

    .venv/bin/python benchmarks/review.py --out review.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import psycopg
import sqlalchemy as sa
from common import PHOTOS, free_port, log, stop
from PIL import Image

from clazzify.review.thumbs import ThumbnailCache
from clazzify.review.users import add_user
from clazzify.scoring.scores import ScoreRepository
from clazzify.training import demo_data

REPO = Path(__file__).resolve().parents[1]
ADMIN = os.environ.get("CLAZZIFY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "clazzify_review_bench"
CLASSES = ("ambiance", "food", "human", "menu")


def build_database(photos: int) -> str:
    """Create and fill the benchmark database; returns its URL."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = sa.make_url(ADMIN).set(database=DB_NAME).render_as_string(hide_password=False)
    ScoreRepository.open(url).close()  # migrations 0001 + 0002
    t0 = time.perf_counter()
    classes = "ARRAY['" + "','".join(CLASSES) + "']"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"""
            INSERT INTO images (image_id, uri, restaurant_id, source, first_seen_at)
            SELECT 'img' || lpad(i::text, 8, '0'), 's3://uploads/' || i || '.jpg',
                   'r' || (i % 5000), (ARRAY['upload','crawler','partner'])[1 + i % 3],
                   now() - interval '1 day'
            FROM generate_series(1, {photos}) i""")
        # Version 3 (under review) is newer than version 2; 10% of photos change label.
        # The top probability leans confident: 0.25 + 0.75 sqrt(u).
        for version, age, shift in (("2", "2 hours", "CASE WHEN i % 10 = 0 THEN 1 ELSE 0 END"),
                                    ("3", "1 hour", "0")):
            conn.execute(f"""
                INSERT INTO scores (image_id, model_name, model_version, label, probability,
                                    source_uri, scored_at, updated_at, writes)
                SELECT 'img' || lpad(i::text, 8, '0'), 'clazzify', '{version}',
                       ({classes})[1 + ((hashtext(i::text) & 1023) + {shift}) % 4],
                       0.25 + 0.75 * sqrt(random()), 's3://uploads/' || i || '.jpg',
                       now() - interval '{age}', now() - interval '{age}', 1
                FROM generate_series(1, {photos}) i""")
        conn.execute(f"""
            INSERT INTO score_probabilities (image_id, model_name, model_version, class_name, probability)
            SELECT 'img00000001', 'clazzify', '3', c, 0.25 FROM unnest({classes}) c""")
        conn.execute(f"""
            INSERT INTO manual_labels (image_id, label, labelled_by, labelled_at)
            SELECT 'img' || lpad(i::text, 8, '0'), ({classes})[1 + i % 4], 'seed', now()
            FROM generate_series(1, {photos}, 20) i""")
        conn.execute("VACUUM ANALYZE")
        n = conn.execute("SELECT count(*) FROM scores").fetchone()[0]
    log(f"database: {n:,} score rows, {photos:,} photos in {time.perf_counter() - t0:.1f} s")
    return url


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict:
    return {"p50_ms": round(statistics.median(ms), 1), "p95_ms": round(percentile(ms, 0.95), 1),
            "max_ms": round(max(ms), 1), "n": len(ms)}


def serve(url: str, thumbs: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    proc = subprocess.Popen([sys.executable, "-m", "clazzify.cli", "review-ui", "--db", url, "--port",
                             str(port), "--thumb-cache", str(thumbs)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{base}/login", timeout=1)
            return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("review-ui did not start")


def login(base: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60)
    token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
    answer = client.post("/login", data={"csrf_token": token, "username": "bench", "password": password})
    if answer.status_code != 303:
        raise RuntimeError(f"login failed: HTTP {answer.status_code}")
    return client


def time_pages(client: httpx.Client, pages: dict[str, str], repeat: int) -> dict:
    out = {}
    for name, path in pages.items():
        first = time.perf_counter()
        answer = client.get(path)
        cold = (time.perf_counter() - first) * 1000
        answer.raise_for_status()
        photos = answer.text.count('class="card')
        ms = []
        for _ in range(repeat):
            t = time.perf_counter()
            client.get(path).raise_for_status()
            ms.append((time.perf_counter() - t) * 1000)
        out[name] = {**summary(ms), "first_ms": round(cold, 1), "photos": photos}
        log(f"{name:<28} {photos:>3} photos  p50 {out[name]['p50_ms']:7.1f} ms  "
            f"p95 {out[name]['p95_ms']:7.1f} ms  (first {cold:.0f} ms)")
    return out


def time_baseline(url: str, repeat: int) -> dict:
    """The same kind of page read through the 0001 views, as review-queue/relabel-export do."""
    queries = {
        "low, page 1 (views)": (
            "SELECT image_id, uri, restaurant_id, label, probability, manual_label FROM image_labels "
            "WHERE model_name = 'clazzify' AND probability < 0.6 AND manual_label IS NULL "
            "ORDER BY probability, image_id LIMIT 100"),
        "low, page 500 (views, OFFSET)": (
            "SELECT image_id, uri, restaurant_id, label, probability, manual_label FROM image_labels "
            "WHERE model_name = 'clazzify' AND probability < 0.6 AND manual_label IS NULL "
            "ORDER BY probability, image_id LIMIT 100 OFFSET 49900"),
        "class human, page 1 (views)": (
            "SELECT image_id, uri, restaurant_id, label, probability, manual_label FROM image_labels "
            "WHERE model_name = 'clazzify' AND label = 'human' AND manual_label IS NULL "
            "ORDER BY probability, image_id LIMIT 100"),
    }
    out = {}
    with psycopg.connect(url) as conn:
        for name, sql in queries.items():
            conn.execute(sql).fetchall()
            ms = []
            for _ in range(max(3, repeat // 4)):
                t = time.perf_counter()
                conn.execute(sql).fetchall()
                ms.append((time.perf_counter() - t) * 1000)
            out[name] = summary(ms)
            log(f"{name:<28} p50 {out[name]['p50_ms']:7.1f} ms  p95 {out[name]['p95_ms']:7.1f} ms")
    return out


def drawn_photos(work: Path, n: int, width: int, height: int) -> list[Path]:
    """Phone-sized JPEGs drawn by the demo painters (uploads are larger than ../shared's)."""
    rng = np.random.default_rng(0)
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = work / f"{i}.jpg"
        demo_data.draw_food(rng, width, height).save(path, quality=90)
        files.append(path)
    return files


def thumbnails(files: list[Path], source: str, size: int, work: Path) -> dict:
    """Thumbnails per second on one thread: cold (read + decode + resize + encode), cached."""
    originals = [f.read_bytes() for f in files]
    pixels = [Image.open(io.BytesIO(data)).size for data in originals]
    cache = ThumbnailCache(work / "cache", size)
    t = time.perf_counter()
    cpu = time.process_time()
    for f in files:
        cache.get(str(f))
    cold_s, cold_cpu = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()
    for _ in range(5):
        for f in files:
            cache.get(str(f))
    warm_s = (time.perf_counter() - t) / 5
    mean_px = statistics.mean(w * h for w, h in pixels) / 1e6
    result = {"photos": len(files), "source": source, "mean_megapixels": round(mean_px, 2), "size": size,
              "cold_per_s": round(len(files) / cold_s, 1),
              "cold_per_cpu_s": round(len(files) / cold_cpu, 1),
              "cached_per_s": round(len(files) / warm_s, 1)}
    log(f"thumbnails: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=500_000, help="photos; scores = 2 x photos")
    parser.add_argument("--repeat", type=int, default=40, help="timed requests per page")
    parser.add_argument("--thumbs", type=int, default=200, help="real photos for the thumbnail run")
    parser.add_argument("--photos-dir", type=Path, default=PHOTOS,
                        help="real photos for the thumbnail run (skipped if absent)")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # odd EXIF in real photos

    load = os.getloadavg()[0]
    url = build_database(args.photos)
    repo = ScoreRepository.open(url)
    password = "benchmark-password"
    add_user(repo.engine, "bench", password, "admin")
    repo.close()
    work = Path(tempfile.mkdtemp(prefix="review-bench-"))
    proc, base = serve(url, work / "thumbs")
    try:
        client = login(base, password)
        middle = "0.45:img00250000"
        pages = {
            "low, page 1": "/queue/low",
            "low, deep page (cursor)": f"/queue/low?after={middle}",
            "class human, page 1": "/queue/class/human",
            "class menu, deep page": f"/queue/class/menu?after={middle}",
            "disagree v3 vs v2, page 1": "/queue/disagree",
            "unreviewed, page 1": "/queue/unreviewed",
            "low, one restaurant": "/queue/low?restaurant=r42&status=all",
            "class food, source partner": "/queue/class/food?source=partner",
        }
        pages_ms = time_pages(client, pages, args.repeat)
        t = time.perf_counter()
        client.get("/counts").raise_for_status()
        counts_ms = (time.perf_counter() - t) * 1000
        log(f"queue counts (uncached): {counts_ms:.0f} ms")
    finally:
        stop(proc)
    baseline = time_baseline(url, args.repeat)
    real = sorted(p for p in args.photos_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    real = real[:: max(1, len(real) // args.thumbs)][: args.thumbs]  # every class, not only the first
    thumbs = [thumbnails(drawn_photos(work / "drawn", 40, 4032, 3024), "drawn 4032x3024 JPEGs", 256,
                         work / "drawn-cache")]
    if real:
        thumbs.append(thumbnails(real, f"real photos ({args.photos_dir.name})", 256, work / "real-cache"))
    if not args.keep:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    result = {"score_rows": 2 * args.photos, "load_1m_before": round(load, 2),
              "load_1m_after": round(os.getloadavg()[0], 2), "pages": pages_ms,
              "counts_uncached_ms": round(counts_ms, 1), "baseline_views": baseline, "thumbnails": thumbs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
