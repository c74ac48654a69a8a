"""Moderators' labels reach the next run: planted mislabels, corrected through ``manual_labels``
in PostgreSQL and in SQLite (and through a relabel CSV), come out corrected in the HDF5 labels."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from worker_support import fresh_pg_database

from clazzify.cli import main
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository
from clazzify.training.demo_data import write_demo_data
from clazzify.training.ingest import read_split_manifest
from clazzify.training.preprocess import PreprocessConfig, build_hdf5

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'scores.db'}"
    else:
        with fresh_pg_database() as url:
            yield url


def plant_mislabels(root: Path, n: int) -> list[Path]:
    """Move ``n`` food photos into the human folder: labelled wrong by the source."""
    moved = []
    for path in sorted((root / "food").iterdir())[:n]:
        target = root / "human" / f"was-food-{path.name}"
        path.rename(target)
        moved.append(target)
    return moved


def hdf5_labels(data: Path) -> dict[str, str]:
    out = {}
    for split in ("train", "val", "test"):
        with h5py.File(data / f"{split}.h5", "r") as f:
            names = json.loads(f.attrs["class_names"])
            for uri, label in zip(f["uris"].asstr()[:], f["labels"][:], strict=True):
                out[uri] = names[label]
    return out


def test_manual_labels_in_the_scores_database_correct_the_next_runs_labels(db_url: str, tmp_path: Path):
    root = tmp_path / "photos"
    write_demo_data(root, per_class=12, size=48, seed=4, bad_files=False)
    wrong = plant_mislabels(root, 6)
    repo = ScoreRepository.open(db_url)
    try:
        # the workers know these photos by id and URI; a moderator corrects four of the six
        repo.save(Batch(images=[ImageRow(f"img-{i}", f"file://{p}") for i, p in enumerate(wrong)]))
        repo.add_manual_labels([(f"img-{i}", "food") for i in range(4)], labelled_by="mod")
        repo.add_manual_labels([("img-unknown", "menu")], labelled_by="mod")  # a photo ingest does not list
        assert {r["image_id"] for r in repo.manual_labels()} == {"img-0", "img-1", "img-2", "img-3", "img-unknown"}
    finally:
        repo.close()

    out = tmp_path / "ing"
    result = CliRunner().invoke(main, ["ingest", str(root), "-o", str(out), "--labels-from", db_url])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["label_overrides"] == {"manual": 4}
    assert report["label_sources"]["manual"] == 4
    rows = {r.uri: r for r in read_split_manifest(out / "manifest.csv")}
    for i, path in enumerate(wrong):
        assert rows[str(path)].label == ("food" if i < 4 else "human")
        assert rows[str(path)].label_source == ("manual" if i < 4 else "folder")

    build_hdf5(out / "manifest.csv", tmp_path / "data", PreprocessConfig(image_size=32, workers=1), progress=False)
    labels = hdf5_labels(tmp_path / "data")
    assert [labels[str(p)] for p in wrong] == ["food"] * 4 + ["human"] * 2


def test_a_relabel_csv_wins_over_the_database(tmp_path: Path):
    root = tmp_path / "photos"
    write_demo_data(root, per_class=12, size=48, seed=5, bad_files=False)
    wrong = plant_mislabels(root, 2)
    db = f"sqlite:///{tmp_path / 'scores.db'}"
    repo = ScoreRepository.open(db)
    repo.save(Batch(images=[ImageRow("a", str(wrong[0])), ImageRow("b", str(wrong[1]))]))
    repo.add_manual_labels([("a", "menu"), ("b", "menu")])
    repo.close()
    csv = tmp_path / "relabel.csv"
    csv.write_text(f"uri,label,corrected_label\n{wrong[0]},human,food\n{wrong[1]},human,\n")
    out = tmp_path / "ing"
    result = CliRunner().invoke(main, ["ingest", str(root), "-o", str(out), "--labels-from", db,
                                       "--relabel-csv", str(csv)])
    assert result.exit_code == 0, result.output
    rows = {r.uri: r for r in read_split_manifest(out / "manifest.csv")}
    assert (rows[str(wrong[0])].label, rows[str(wrong[0])].label_source) == ("food", "relabel_csv")
    assert (rows[str(wrong[1])].label, rows[str(wrong[1])].label_source) == ("menu", "manual")


def test_an_unreadable_labels_database_is_one_clear_line(tmp_path: Path):
    root = tmp_path / "photos"
    write_demo_data(root, per_class=6, size=48, seed=6, bad_files=False)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    result = CliRunner().invoke(main, ["ingest", str(root), "-o", str(tmp_path / "ing"), "--labels-from", empty])
    assert result.exit_code != 0
    assert "cannot read manual labels from" in result.output and "no such table" in result.output
    assert "Traceback" not in result.output


def test_a_not_a_class_mark_never_becomes_a_class_label(tmp_path: Path):
    """A moderator's "not a class" mark is read as an OOD example, never as a label by ingest."""
    from clazzify.scoring.labels import NOT_A_CLASS, read_not_a_class_marks

    root = tmp_path / "photos"
    write_demo_data(root, per_class=6, size=48, seed=7, bad_files=False)
    marked = sorted((root / "food").iterdir())[0]
    db = f"sqlite:///{tmp_path / 'scores.db'}"
    repo = ScoreRepository.open(db)
    repo.save(Batch(images=[ImageRow("m", str(marked))]))
    repo.record_labels([("m", NOT_A_CLASS)], labelled_by="mod", action="label")
    repo.close()
    assert read_not_a_class_marks(db) == [("m", str(marked))]
    out = tmp_path / "ing"
    result = CliRunner().invoke(main, ["ingest", str(root), "-o", str(out), "--labels-from", db])
    assert result.exit_code == 0, result.output
    rows = {r.uri: r for r in read_split_manifest(out / "manifest.csv")}
    assert (rows[str(marked)].label, rows[str(marked)].label_source) == ("food", "folder")
    assert NOT_A_CLASS not in {r.label for r in rows.values()}
