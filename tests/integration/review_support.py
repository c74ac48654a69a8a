"""A small review database for the browser tests and the docs screenshot.

Photos are drawn by the demo-data painters (no files from outside), written as JPEGs, and
scored by two model versions with made-up probabilities: version "2" first, then "3", so
"3" is the version under review and "2" the one the disagreement queue compares with.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
from serving_support import free_port, stop_process

from clazzify import DEMO_CLASSES
from clazzify.scoring.schema import label_history, manual_labels
from clazzify.scoring.schema import scores as scores_table
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow
from clazzify.training import demo_data

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RESTAURANTS = ("r-bistro", "r-noodle", "r-pizza")


def seed_review_db(db_url: str, photos: Path, per_class: int = 6, size: int = 160, seed: int = 0) -> list[str]:
    """Write ``per_class`` photos of each demo class and two versions' scores of them.

    Returns:
        The image ids, in the order written.
    """
    rng = np.random.default_rng(seed)
    painters = {"ambiance": demo_data.draw_ambiance, "food": demo_data.draw_food,
                "human": demo_data.draw_human, "menu": demo_data.draw_menu}
    photos.mkdir(parents=True, exist_ok=True)
    rows, truth = [], []
    for c, cls in enumerate(DEMO_CLASSES):
        for k in range(per_class):
            image_id = f"{cls}-{k:02d}"
            path = photos / f"{image_id}.jpg"
            buf = io.BytesIO()
            painters[cls](rng, size, size).save(buf, format="JPEG", quality=90)
            path.write_bytes(buf.getvalue())
            rows.append(ImageRow(image_id, str(path), RESTAURANTS[(c + k) % 3], "upload" if k % 2 else "crawler"))
            truth.append(c)
    repo = ScoreRepository.open(db_url)
    try:
        for version, sharpness in (("2", 2.0), ("3", 3.0)):
            scores = []
            for row, c in zip(rows, truth, strict=True):
                logits = rng.normal(0.0, 1.0, len(DEMO_CLASSES))
                logits[c] += sharpness * rng.uniform(0.0, 1.2)
                p = np.exp(logits) / np.exp(logits).sum()
                scores.append(ScoreRow(row.image_id, "clazzify", version,
                                       {n: float(v) for n, v in zip(DEMO_CLASSES, p, strict=True)}, row.uri))
            repo.save(Batch(images=rows, scores=scores))
            time.sleep(0.01)  # version 3's scores are strictly newer
    finally:
        repo.close()
    return [r.image_id for r in rows]


def clazzify(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``clazzify`` command line from this checkout."""
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{REPO_ROOT}"}
    return subprocess.run([sys.executable, "-m", "clazzify.cli", *args], input=stdin, text=True,
                          capture_output=True, env=env, timeout=60, check=False)


@contextmanager
def review_process(db_url: str, thumb_cache: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`clazzify review-ui` in a child process on a free port; yields its base URL and process.

    The URL is https when ``extra`` holds ``--tls-cert``.
    """
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}{os.pathsep}{REPO_ROOT}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clazzify.cli", "review-ui", "--db", db_url, "--port", str(port),
         "--thumb-cache", str(thumb_cache), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    base = f"{'https' if '--tls-cert' in extra else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"review-ui exited {proc.returncode}: {proc.stdout.read()}")
            try:
                httpx.get(f"{base}/login", timeout=1, verify=False)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise AssertionError("review-ui did not answer within 30 s") from None
                time.sleep(0.1)
        yield base, proc
    finally:
        stop_process(proc, grace=10)


#: The training mix the stats seed draws from (the default dataset's class counts).
TRAINING_COUNTS = {"ambiance": 178, "food": 470, "human": 415, "menu": 216}


def _ood_pictures(photos: Path) -> list[Path]:
    """Uploads that are none of the classes: a flat colour, a bar chart, a UI screenshot."""
    from PIL import Image, ImageDraw

    photos.mkdir(parents=True, exist_ok=True)
    flat = Image.new("RGB", (160, 160), (40, 160, 70))
    chart = Image.new("RGB", (160, 160), "white")
    draw = ImageDraw.Draw(chart)
    for i, h in enumerate((40, 90, 65, 120, 30)):
        draw.rectangle([15 + i * 28, 150 - h, 35 + i * 28, 150], fill=(50, 90, 200))
    shot = Image.new("RGB", (160, 160), (245, 245, 250))
    draw = ImageDraw.Draw(shot)
    draw.rectangle([0, 0, 160, 22], fill=(30, 30, 60))
    for y in range(32, 150, 18):
        draw.rectangle([10, y, 150, y + 10], fill=(200, 205, 215))
    paths = []
    for name, picture in (("flat", flat), ("chart", chart), ("screenshot", shot)):
        path = photos / f"ood-{name}.png"
        picture.save(path)
        paths.append(path)
    return paths


def seed_stats_db(db_url: str, photos: Path, days: int = 14, per_day: int = 60, seed: int = 1,
                  now: datetime | None = None) -> dict[str, int]:
    """Two weeks of version "3"'s scores with out-of-distribution verdicts and moderators'
    labels, dated over ``days`` days: steady at the training mix, then, in the last four
    days, a flood of food photos, more unknown uploads and a less sure model.

    Returns:
        How many scores were flagged unknown per day offset (0: today), for the assertions.
    """
    now = now or datetime.now(UTC)
    rng = np.random.default_rng(seed)
    ids = seed_review_db(db_url, photos / "classes", per_class=4, seed=seed)
    uris = {i: str(photos / "classes" / f"{i}.jpg") for i in ids}
    ood = _ood_pictures(photos / "ood")
    classes = list(DEMO_CLASSES)
    steady = np.array([TRAINING_COUNTS[c] for c in classes], dtype=float)
    steady /= steady.sum()
    flood = np.array([0.05, 0.8, 0.1, 0.05])
    repo = ScoreRepository.open(db_url)
    flagged_per_day: dict[str, int] = {}
    try:
        for offset in range(days - 1, -1, -1):
            drifting = offset < 4
            mix = flood if drifting else steady
            unknown_share = 0.2 if drifting else 0.03
            sharpness = 1.6 if drifting else 3.2
            images, scores, marks = [], [], []
            for k in range(per_day):
                image_id = f"d{offset:02d}-{k:03d}"
                is_unknown = rng.random() < unknown_share
                c = int(rng.choice(len(classes), p=mix))
                uri = str(ood[k % len(ood)]) if is_unknown else uris[f"{classes[c]}-{k % 4:02d}"]
                logits = rng.normal(0.0, 0.7, len(classes))
                logits[c] += sharpness * rng.uniform(0.6, 1.2)
                p = np.exp(logits) / np.exp(logits).sum()
                images.append(ImageRow(image_id, uri, RESTAURANTS[k % 3], "upload"))
                scores.append(ScoreRow(image_id, "clazzify", "3", dict(zip(classes, map(float, p), strict=True)),
                                       uri, unknown=is_unknown,
                                       in_distribution_score=float(rng.normal(-2 if is_unknown else 3, 1))))
                if k % 2 == 0:  # moderators review every other photo; they agree less when it drifts
                    agree = rng.random() < (0.7 if drifting else 0.93)
                    truth = c if agree else (c + 1) % len(classes)
                    marks.append((image_id, "not_a_class" if is_unknown else classes[truth]))
            repo.save(Batch(images=images, scores=scores))
            repo.record_labels(marks, labelled_by="maria", action="label")
            flagged_per_day[str(offset)] = sum(bool(s.unknown) for s in scores)
            when = now - timedelta(days=offset, hours=1)
            with repo.engine.begin() as conn:
                day_ids = [i.image_id for i in images]
                conn.execute(sa.update(scores_table).where(scores_table.c.image_id.in_(day_ids))
                             .values(scored_at=when, updated_at=when))
                conn.execute(sa.update(manual_labels).where(manual_labels.c.image_id.in_(day_ids))
                             .values(labelled_at=when))
                conn.execute(sa.update(label_history).where(label_history.c.image_id.in_(day_ids))
                             .values(labelled_at=when))
    finally:
        repo.close()
    return flagged_per_day


@contextmanager
def review_server(db_url: str, thumb_cache: Path, *extra: str) -> Iterator[str]:
    """`clazzify review-ui` in a child process on a free port; yields its base URL."""
    with review_process(db_url, thumb_cache, *extra) as (base, _proc):
        yield base


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


@contextmanager
def screenshot_page(db_url: str, work: Path, role: str, next_path: str, *server_args: str) -> Iterator:
    """A Chromium page logged in as a fresh ``role`` account on a review server over
    ``db_url``, opened at ``next_path``: what the docs' screenshots are taken of."""
    from playwright.sync_api import sync_playwright

    from clazzify.review.users import add_user
    from clazzify.scoring.database import create_db_engine

    engine = create_db_engine(db_url)
    add_user(engine, "maria", "screenshot-password", role)
    engine.dispose()
    with review_server(db_url, work / "thumbs", *server_args) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
            page.goto(f"{base}/login?next={next_path}")
            page.fill("input[name=username]", "maria")
            page.fill("input[name=password]", "screenshot-password")
            page.click("main.login button[type=submit]")
            yield base, page
        finally:
            browser.close()


def take_screenshot(out: Path, work: Path) -> None:
    """The docs' picture of the review page: a seeded SQLite database, a few decisions made."""
    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{tempfile.mkdtemp(dir=work)}/scores.db"
    seed_review_db(db_url, work / "photos", per_class=8, seed=4)
    with screenshot_page(db_url, work, "admin", "/queue/low") as (_, page):
        page.wait_for_selector("#counts .queues")
        for key in ("Enter", "2", "ArrowRight"):
            page.keyboard.press(key)
            page.wait_for_timeout(250)
        page.wait_for_timeout(2000)  # the counts reload after a decision
        page.screenshot(path=str(out))


def take_stats_screenshots(out_dir: Path, work: Path) -> None:
    """The docs' pictures of the Stats charts and of the queue "Not one of the classes"."""
    import tempfile

    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{tempfile.mkdtemp(dir=work)}/scores.db"
    seed_stats_db(db_url, work / "photos")
    mix = ",".join(f"{k}={v}" for k, v in TRAINING_COUNTS.items())
    with screenshot_page(db_url, work, "moderator", "/stats", "--training-mix", mix) as (base, page):
        page.wait_for_selector("#chart-agreement svg")
        page.locator("section.charts").screenshot(path=str(out_dir / "review-stats.png"))
        page.goto(f"{base}/queue/unknown")
        page.wait_for_selector("#counts .queues")
        page.keyboard.press("x")
        page.wait_for_timeout(2000)  # the toast, then the counts reload
        page.screenshot(path=str(out_dir / "review-unknown-queue.png"))


if __name__ == "__main__":
    if sys.argv[1] == "stats":
        take_stats_screenshots(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        take_screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
