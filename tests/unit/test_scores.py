"""The scores database on SQLite: migrations, idempotent upserts, views and queries."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from clazzify.core.errors import ConfigError
from clazzify.scoring.database import normalise_url
from clazzify.scoring.dead_letters import DeadLetter
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow

pytestmark = pytest.mark.unit


def score(image_id: str, version: str = "1", **probs: float) -> ScoreRow:
    probs = probs or {"food": 0.8, "ambiance": 0.1, "human": 0.05, "menu": 0.05}
    return ScoreRow(image_id, "clazzify", version, probs, f"s3://uploads/{image_id}.jpg")


def image(image_id: str, restaurant: str | None = "r1") -> ImageRow:
    return ImageRow(image_id, f"s3://uploads/{image_id}.jpg", restaurant, "app")


def test_normalise_url_picks_psycopg_and_accepts_paths() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u:p@h:5433/db") == "postgresql+psycopg://u:p@h:5433/db"
    assert normalise_url("scores.db") == "sqlite:///scores.db"
    with pytest.raises(ConfigError, match="not supported"):
        normalise_url("mysql://u@h/db")


def test_migrating_twice_is_harmless(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    ScoreRepository.open(url).close()
    repo = ScoreRepository.open(url)
    names = set(sa.inspect(repo.engine).get_table_names()) | set(
        sa.inspect(repo.engine).get_view_names()
    )
    assert {
        "scores",
        "score_probabilities",
        "images",
        "manual_labels",
        "dead_letters",
        "alembic_version",
        "latest_scores",
        "class_scores",
        "image_labels",
    } <= names
    repo.close()


def test_saving_the_same_batch_twice_keeps_one_row_and_counts_the_writes(
    repo: ScoreRepository,
) -> None:
    batch = Batch(images=[image("a")], scores=[score("a")])
    repo.save(batch)
    repo.save(batch)
    with repo.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT image_id, label, writes FROM scores")).all()
        n_probs = conn.scalar(sa.text("SELECT count(*) FROM score_probabilities"))
    assert rows == [("a", "food", 2)]
    assert n_probs == 4
    assert repo.count_scores("clazzify", "1") == 1


def test_a_new_model_version_gets_its_own_row_and_takes_over_the_views(
    repo: ScoreRepository,
) -> None:
    repo.save(Batch(images=[image("a")], scores=[score("a", "1")]))
    repo.save(Batch(scores=[score("a", "2", food=0.2, ambiance=0.7, human=0.05, menu=0.05)]))
    assert repo.count_scores("clazzify") == 2
    assert repo.scored_ids("clazzify", "2", ["a", "b"]) == {"a"}
    assert repo.scored_ids("clazzify", "3", ["a"]) == set()
    [row] = repo.restaurant_images("r1", "ambiance", model_name="clazzify")
    assert (row["image_id"], row["model_version"]) == ("a", "2")
    assert repo.restaurant_images("r1", "food", model_name="clazzify") == []


def test_restaurant_images_are_best_first_and_filtered(repo: ScoreRepository) -> None:
    repo.save(
        Batch(
            images=[image("a"), image("b"), image("c"), image("d", "r2")],
            scores=[
                score("a", ambiance=0.6, food=0.4),
                score("b", ambiance=0.9, food=0.1),
                score("c", ambiance=0.2, food=0.8),
                score("d", ambiance=0.99, food=0.01),
            ],
        )
    )
    rows = repo.restaurant_images("r1", "ambiance", model_name="clazzify")
    assert [r["image_id"] for r in rows] == ["b", "a"]
    assert [
        r["image_id"]
        for r in repo.restaurant_images(
            "r1", "ambiance", model_name="clazzify", min_probability=0.7
        )
    ] == ["b"]


def test_likely_photos_lists_each_queue_above_the_threshold(repo: ScoreRepository) -> None:
    repo.save(
        Batch(
            images=[image(i) for i in "abc"],
            scores=[
                score("a", human=0.7, menu=0.6, food=0.1),
                score("b", human=0.2, menu=0.9),
                score("c", food=0.95, human=0.05),
            ],
        )
    )
    rows = repo.likely_photos(["human", "menu"], model_name="clazzify", min_probability=0.5)
    assert [(r["queue"], r["image_id"]) for r in rows] == [
        ("human", "a"),
        ("menu", "b"),
        ("menu", "a"),
    ]


def test_relabel_candidates_are_disagreements_then_low_confidence(repo: ScoreRepository) -> None:
    repo.save(
        Batch(
            images=[image(i) for i in "abcd"],
            scores=[
                score("a", food=0.95, menu=0.05),
                score("b", food=0.45, ambiance=0.35, menu=0.2),
                score("c", food=0.99, menu=0.01),
                score("d", food=0.55, menu=0.45),
            ],
        )
    )
    repo.add_manual_labels([("a", "menu"), ("c", "food")], labelled_by="test")
    rows = repo.relabel_candidates(model_name="clazzify", max_probability=0.6)
    assert [(r["image_id"], r["disagrees"], r["manual_label"]) for r in rows] == [
        ("a", 1, "menu"),
        ("b", 0, None),
        ("d", 0, None),
    ]


def test_dead_letters_are_recorded(repo: ScoreRepository) -> None:
    repo.save(
        Batch(dead_letters=[DeadLetter("missing_object", "NoSuchKey", "{}", "x", "s3://b/x")])
    )
    [row] = repo.dead_letter_rows()
    assert (row["reason"], row["image_id"], row["uri"]) == ("missing_object", "x", "s3://b/x")


def test_a_later_event_without_a_restaurant_keeps_the_known_one(repo: ScoreRepository) -> None:
    repo.save(Batch(images=[image("a", "r9")], scores=[score("a")]))
    repo.save(Batch(images=[image("a", None)], scores=[score("a")]))
    assert [r["image_id"] for r in repo.restaurant_images("r9", "food", model_name="clazzify")] == [
        "a"
    ]


def test_unknown_photos_are_in_no_class_collection(tmp_path: Path) -> None:
    repo = ScoreRepository.open(f"sqlite:///{tmp_path}/s.db")
    rows = [
        ScoreRow("flower", "clazzify", "1", {"food": 0.97, "menu": 0.03}, "s3://u/flower.jpg",
                 unknown=True, in_distribution_score=-3.0),
        ScoreRow("shot", "clazzify", "1", {"food": 0.1, "menu": 0.9}, "s3://u/shot.png",
                 unknown=True, in_distribution_score=None),
        ScoreRow("pizza", "clazzify", "1", {"food": 0.9, "menu": 0.1}, "s3://u/pizza.jpg",
                 unknown=False, in_distribution_score=5.0),
        ScoreRow("old", "clazzify", "1", {"food": 0.8, "menu": 0.2}, "s3://u/old.jpg"),  # no verdict
    ]
    repo.save(Batch(images=[image(r.image_id) for r in rows], scores=rows))
    food = repo.restaurant_images("r1", "food", model_name="clazzify")
    assert [r["image_id"] for r in food] == ["pizza", "old"]
    assert repo.likely_photos(["menu"], model_name="clazzify", min_probability=0.5) == []
    flagged = repo.unknown_images(model_name="clazzify")
    assert [(r["image_id"], r["top_class"]) for r in flagged] == [("flower", "food"), ("shot", "menu")]
    assert flagged[0]["in_distribution_score"] == pytest.approx(-3.0)
    assert repo.unknown_images("elsewhere", model_name="clazzify") == []
    assert repo.count_unknown("clazzify", "1") == (2, 3)
    # A rescore that clears the flag brings the photo back into its class.
    repo.save(Batch(scores=[ScoreRow("flower", "clazzify", "1", {"food": 0.97, "menu": 0.03},
                                     "s3://u/flower.jpg", unknown=False)]))
    assert {r["image_id"] for r in repo.restaurant_images("r1", "food", model_name="clazzify")} == {
        "pizza", "old", "flower"}
    with repo.engine.connect() as conn:
        flags = dict(conn.execute(sa.text("SELECT image_id, unknown FROM image_labels")).tuples().all())
    assert flags["shot"] and flags["old"] is None and not flags["flower"]


def test_migration_0004_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    from clazzify.scoring.schema import upgrade_database

    repo = ScoreRepository.open(f"sqlite:///{tmp_path}/s.db")
    repo.save(Batch(images=[image("a")], scores=[score("a")]))
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "clazzify.scoring:migrations")
    with repo.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    columns = {c["name"] for c in sa.inspect(repo.engine).get_columns("scores")}
    assert "unknown" not in columns
    assert repo.restaurant_images("r1", "food", model_name="clazzify")[0]["image_id"] == "a"
    upgrade_database(repo.engine)
    assert repo.unknown_images(model_name="clazzify") == []
    assert len(repo.restaurant_images("r1", "food", model_name="clazzify")) == 1


def test_images_command_lists_unknown_photos_apart(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from clazzify.cli import main

    db = f"sqlite:///{tmp_path}/s.db"
    repo = ScoreRepository.open(db)
    rows = [
        ScoreRow("flower", "clazzify", "1", {"food": 0.97, "menu": 0.03}, "s3://u/flower.jpg",
                 unknown=True, in_distribution_score=-3.0),
        ScoreRow("pizza", "clazzify", "1", {"food": 0.9, "menu": 0.1}, "s3://u/pizza.jpg",
                 unknown=False, in_distribution_score=5.0),
    ]
    repo.save(Batch(images=[image(r.image_id) for r in rows], scores=rows))
    repo.close()
    run = CliRunner().invoke
    food = run(main, ["images", "--restaurant", "r1", "--label", "food", "--db", db, "--format", "json"])
    assert food.exit_code == 0, food.output
    assert [r["image_id"] for r in json.loads(food.output)] == ["pizza"]
    for args in (["--unknown"], ["--label", "unknown", "--restaurant", "r1"]):
        out = run(main, ["images", *args, "--db", db, "--format", "json"])
        assert out.exit_code == 0, out.output
        assert [r["image_id"] for r in json.loads(out.output)] == ["flower"]
    missing = run(main, ["images", "--label", "food", "--db", db])
    assert missing.exit_code != 0 and "--restaurant" in missing.output
