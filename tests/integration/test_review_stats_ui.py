"""The unknown route and the Stats charts in a real browser (Chromium via Playwright).

On PostgreSQL (the charts' day and bin arithmetic is dialect-specific; SQLite is covered by
tests/unit/test_charts.py): the queue "Not one of the classes" lists exactly the photos the
model flagged, the class queues leave them out, ``x`` marks a photo "not a class" (and ``u``
takes the mark back), and the Stats page draws its four SVG charts from two weeks of scores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import Browser, expect
from review_support import review_server, seed_stats_db
from worker_support import fresh_pg_database

from clazzify.review.users import add_user
from clazzify.scoring.database import create_db_engine
from clazzify.scoring.labels import NOT_A_CLASS, read_not_a_class_marks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "maria-stats-pw"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, str, dict[str, int]]]:
    tmp = tmp_path_factory.mktemp("stats")
    with fresh_pg_database() as db_url:
        flagged = seed_stats_db(db_url, tmp / "photos")
        engine = create_db_engine(db_url)
        add_user(engine, "maria", PASSWORD, "moderator")
        engine.dispose()
        with review_server(db_url, tmp / "thumbs", "--training-mix",
                           "ambiance=178,food=470,human=415,menu=216") as base:
            yield base, db_url, flagged


def _login(page, base: str, target: str) -> None:
    page.goto(f"{base}/login?next={target}")
    page.fill("input[name=username]", "maria")
    page.fill("input[name=password]", PASSWORD)
    page.click("main.login button[type=submit]")


def _flagged_pending(db_url: str) -> set[str]:
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        ids = set(conn.scalars(sa.text(
            "SELECT s.image_id FROM scores s LEFT JOIN manual_labels m ON m.image_id = s.image_id "
            "WHERE s.unknown AND m.image_id IS NULL")))
    engine.dispose()
    return ids


def test_the_unknown_queue_and_the_not_a_class_key(site, browser: Browser) -> None:
    base, db_url, flagged = site
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    _login(page, base, "/queue/unknown")
    expect(page.locator("main h1")).to_contain_text("Not one of the classes")
    expect(page.locator("#counts .queues")).to_contain_text("Not one of the classes")
    expect(page.locator("p.keys")).to_contain_text("not a class")
    pending = _flagged_pending(db_url)
    assert 0 < len(pending) <= sum(flagged.values())
    cards = page.locator("#grid .card")
    shown = set(cards.evaluate_all("els => els.map(e => e.dataset.id)"))
    assert shown == pending  # page size 100 holds them all
    assert page.locator("#grid .card .ood").count() == len(shown)

    # No flagged photo sits in a class queue.
    page.goto(f"{base}/queue/class/food?status=all")
    in_food = set(page.locator("#grid .card").evaluate_all("els => els.map(e => e.dataset.id)"))
    assert in_food and not in_food & pending

    page.goto(f"{base}/queue/unknown")
    first = page.locator("#grid .card").first.get_attribute("data-id")
    page.keyboard.press("x")
    expect(page.locator("#toast")).to_contain_text(f"{first} → {NOT_A_CLASS}")
    expect(page.locator(f"#grid .card[data-id='{first}'] .badge")).to_contain_text("not a class")
    assert first in {i for i, _ in read_not_a_class_marks(db_url)}
    page.keyboard.press("u")
    expect(page.locator("#toast")).to_contain_text("Undid 1 label")
    assert first not in {i for i, _ in read_not_a_class_marks(db_url)}
    page.close()


def test_the_stats_page_draws_four_charts(site, browser: Browser, tmp_path: Path) -> None:
    base, _db_url, flagged = site
    page = browser.new_page(viewport={"width": 1360, "height": 1000})
    _login(page, base, "/stats")
    for chart in ("class-mix", "unknown", "confidence", "agreement"):
        expect(page.locator(f"#chart-{chart} svg")).to_be_visible()
    mix = page.locator("#chart-class-mix svg rect title")
    titles = mix.all_text_contents()
    assert any("training set" in t and t.startswith("food: 36.") for t in titles)
    # Today's bar: food well above its training share (the flood of the last four days).
    today = [t for t in titles if "training set" not in t and t.startswith("food:")][-1]
    assert float(re.match(r"food: ([\d.]+)%", today).group(1)) > 45

    bars = page.locator("#chart-unknown svg rect title").all_text_contents()
    assert len(bars) == 14
    last = re.search(r"\((\d+) of (\d+) photos\)", bars[-1])
    assert int(last.group(1)) == flagged["0"] and int(last.group(2)) == 60

    hist = page.locator("#chart-confidence svg rect title").all_text_contents()
    counted = sum(int(re.search(r": ([\d,]+) photos", t).group(1).replace(",", "")) for t in hist)
    assert counted == 14 * 60 + 16  # and the 16 photos seed_review_db scored today
    assert page.locator("#chart-agreement svg circle").count() >= 14
    shot = tmp_path / "stats.png"
    page.locator("main.stats").screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    page.close()
