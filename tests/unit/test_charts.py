"""The Stats charts: what queues.chart_data reads on SQLite, and the SVG the charts draw."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta

import pytest
import sqlalchemy as sa

from clazzify.review import charts, queues
from clazzify.scoring.schema import manual_labels, scores
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def _titles(svg: str, tag: str = "rect") -> list[str]:
    root = ET.fromstring(str(svg))  # well-formed XML, or this raises
    return [el.find(f"{SVG}title").text for el in root.iter(f"{SVG}{tag}") if el.find(f"{SVG}title") is not None]


@pytest.fixture
def dated(repo: ScoreRepository) -> ScoreRepository:
    """Day -2: 3 food, 1 menu, 1 flagged; today: 2 food, 2 flagged; labels on both days."""
    plan = {2: [("food", False)] * 3 + [("menu", False), ("food", True)],
            0: [("food", False)] * 2 + [("menu", True), ("food", True)]}
    for offset, rows in plan.items():
        ids = [f"d{offset}-{k}" for k in range(len(rows))]
        repo.save(Batch(
            images=[ImageRow(i, f"/p/{i}.jpg") for i in ids],
            scores=[ScoreRow(i, "clazzify", "3", {label: 0.83, "other": 0.17}, f"/p/{i}.jpg", unknown=u)
                    for i, (label, u) in zip(ids, rows, strict=True)],
        ))
        repo.record_labels([(ids[0], "food"), (ids[1], "menu")], labelled_by="ann", action="label")
        when = NOW - timedelta(days=offset, hours=2)
        with repo.engine.begin() as conn:
            conn.execute(sa.update(scores).where(scores.c.image_id.in_(ids)).values(scored_at=when))
            conn.execute(sa.update(manual_labels).where(manual_labels.c.image_id.in_(ids))
                         .values(labelled_at=when))
    return repo


def test_chart_data_counts_days_bins_and_agreement(dated: ScoreRepository) -> None:
    with dated.engine.connect() as conn:
        data = queues.chart_data(conn, queues.Scope("clazzify", "3", None, 0.6), days=3, now=NOW)
    d0, d2 = date(2026, 12, 2), date(2026, 11, 30)
    assert data.days == [d2, date(2026, 12, 1), d0]
    assert data.class_mix == {d2: {"food": 3, "menu": 1}, d0: {"food": 2}}
    assert data.unknown == {d2: (1, 5), d0: (2, 4)}
    in_dist, flagged = data.confidence
    assert sum(in_dist) == 6 and sum(flagged) == 3
    assert in_dist[16] == 6  # 0.83 * 20 = 16.6
    assert data.agreement == {"food": {d2: (1, 2), d0: (1, 2)}}


def test_the_charts_are_valid_svg_with_the_numbers_in_their_titles(dated: ScoreRepository) -> None:
    with dated.engine.connect() as conn:
        data = queues.chart_data(conn, queues.Scope("clazzify", "3", None, 0.6), days=3, now=NOW)
    mix = charts.class_mix(data.days, data.class_mix, ["food", "menu"], {"food": 0.6, "menu": 0.4})
    titles = _titles(mix)
    assert "food: 60.0% (training set)" in titles
    assert "food: 75.0% (30 Nov: 3 of 4)" in titles and "menu: 25.0% (30 Nov: 1 of 4)" in titles
    assert "no photos" in str(mix)  # 1 Dec had none
    rate = _titles(charts.unknown_rate(data.days, data.unknown))
    assert rate == ["30 Nov: 20.0% unknown (1 of 5 photos)", "02 Dec: 50.0% unknown (2 of 4 photos)"]
    hist = _titles(charts.confidence(*data.confidence))
    assert sum(int(re.search(r": (\d+) photos", t).group(1)) for t in hist) == 9
    dots = _titles(charts.agreement(data.days, data.agreement, ["food", "menu"]), "circle")
    assert dots == ["food, 30 Nov: moderators kept 1 of 2 (50%)", "food, 02 Dec: moderators kept 1 of 2 (50%)"]


def test_chart_text_is_escaped() -> None:
    svg = charts.class_mix([date(2026, 12, 2)], {date(2026, 12, 2): {"<script>": 2}}, ["<script>"], None)
    assert "<script>" not in str(svg) and "&lt;script&gt;" in str(svg)
    ET.fromstring(str(svg))


def test_an_older_model_without_verdicts_says_so() -> None:
    svg = charts.unknown_rate([date(2026, 12, 2)], {date(2026, 12, 2): (0, 0)})
    assert "no out-of-distribution verdicts" in str(svg)
