"""Manual labels: "not a class" marks are labels with history and undo, and never a class."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from clazzify.scoring.labels import NOT_A_CLASS, read_manual_labels, read_not_a_class_marks
from clazzify.scoring.relabel import EXPORT_FIELDS, export_rows, read_relabels, write_csv
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow

pytestmark = pytest.mark.unit


@pytest.fixture
def repo(tmp_path: Path) -> ScoreRepository:
    repo = ScoreRepository.open(f"sqlite:///{tmp_path}/s.db")
    ids = ["flower", "chart", "pizza"]
    repo.save(Batch(
        images=[ImageRow(i, f"s3://u/{i}.jpg", "r1", "app") for i in ids],
        scores=[ScoreRow(i, "clazzify", "1", {"food": 0.55, "menu": 0.45}, f"s3://u/{i}.jpg")
                for i in ids],
    ))
    return repo


def test_marks_go_to_the_ood_reader_never_to_training(repo: ScoreRepository) -> None:
    repo.record_labels([("flower", NOT_A_CLASS)], labelled_by="ann", action="label")
    repo.record_labels([("chart", NOT_A_CLASS)], labelled_by="bob", action="label")
    repo.record_labels([("pizza", "food")], labelled_by="ann", action="label")
    url = repo.url
    assert [(r["image_id"], r["label"]) for r in read_manual_labels(url)] == [("pizza", "food")]
    assert read_not_a_class_marks(url) == [("chart", "s3://u/chart.jpg"),
                                          ("flower", "s3://u/flower.jpg")]

    # Undo gives the photo back its label before the mark; the mark is gone.
    repo.record_labels([("pizza", NOT_A_CLASS)], labelled_by="ann", action="label")
    assert ("pizza", "s3://u/pizza.jpg") in read_not_a_class_marks(url)
    assert read_manual_labels(url) == []
    changes, _ = repo.undo_last("ann")
    assert [(c.image_id, c.new_label) for c in changes] == [("pizza", "food")]
    assert ("pizza", "s3://u/pizza.jpg") not in read_not_a_class_marks(url)
    assert [r["label"] for r in read_manual_labels(url)] == ["food"]


def test_relabel_export_and_import_skip_the_marks(repo: ScoreRepository, tmp_path: Path) -> None:
    repo.record_labels([("flower", NOT_A_CLASS)], labelled_by="ann", action="label")
    candidates = repo.relabel_candidates(model_name="clazzify", max_probability=0.6)
    assert "flower" in {c["image_id"] for c in candidates}  # low confidence and "disagrees"
    rows = export_rows(candidates)
    assert {r["image_id"] for r in rows} == {"chart", "pizza"}

    # A moderator types the mark into the spreadsheet: it is skipped, never a class label.
    rows[0]["corrected_label"] = NOT_A_CLASS
    rows[1]["label"] = NOT_A_CLASS  # and a kept "label" cell holding it
    out = tmp_path / "relabel.csv"
    write_csv(str(out), EXPORT_FIELDS, rows)
    answers, skipped = read_relabels(str(out), keep_unchanged=True)
    assert answers == [] and skipped == 2
    with out.open() as fh:
        assert NOT_A_CLASS in {r["corrected_label"] for r in csv.DictReader(fh)}
