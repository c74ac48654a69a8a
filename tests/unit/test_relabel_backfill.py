"""The relabel loop (export -> moderators -> manifest ingest reads) and the resumable backfill."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from _scoring import CLASSES, FakeScorer, write_images

from clazzify.core.errors import DataError
from clazzify.scoring.backfill import BackfillConfig, list_collection, score_collection
from clazzify.scoring.relabel import EXPORT_FIELDS, export_rows, read_relabels, write_csv, write_manifest
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow
from clazzify.training.ingest import read_manifest

pytestmark = pytest.mark.unit


@pytest.fixture
def repo(tmp_path: Path) -> ScoreRepository:
    r = ScoreRepository.open(f"sqlite:///{tmp_path}/scores.db")
    yield r
    r.close()


def test_export_fill_import_gives_a_manifest_ingest_reads(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    paths = write_images(tmp_path / "img", 3)
    repo.save(
        Batch(
            images=[ImageRow(f"p{i}", str(p), "r1") for i, p in enumerate(paths)],
            scores=[
                ScoreRow(
                    "p0",
                    "clazzify",
                    "1",
                    {"food": 0.5, "menu": 0.5 - 1e-3, "ambiance": 1e-3},
                    str(paths[0]),
                ),
                ScoreRow("p1", "clazzify", "1", {"food": 0.98, "menu": 0.02}, str(paths[1])),
                ScoreRow(
                    "p2",
                    "clazzify",
                    "1",
                    {"food": 0.4, "ambiance": 0.35, "menu": 0.25},
                    str(paths[2]),
                ),
            ],
        )
    )
    repo.add_manual_labels([("p1", "menu")])
    export = tmp_path / "relabel.csv"
    n = write_csv(
        str(export),
        EXPORT_FIELDS,
        export_rows(repo.relabel_candidates(model_name="clazzify", max_probability=0.6)),
    )
    assert n == 3
    with export.open() as fh:
        exported = list(csv.DictReader(fh))
    assert list(exported[0])[:6] == [
        "uri",
        "label",
        "suggested_label",
        "confidence",
        "reason",
        "corrected_label",
    ]  # the relabel format find-label-issues writes too
    assert [(r["image_id"], r["reason"], r["label"], r["suggested_label"]) for r in exported] == [
        ("p1", "disagrees", "menu", "food"),
        ("p2", "low_confidence", "", "food"),
        ("p0", "low_confidence", "", "food"),
    ]
    # a moderator labels two photos and leaves one
    exported[0]["corrected_label"] = "menu"
    exported[1]["corrected_label"] = "ambiance"
    write_csv(str(export), EXPORT_FIELDS, exported)

    answers, skipped = read_relabels(str(export), CLASSES)
    assert skipped == 1
    manifest = tmp_path / "manifest.csv"
    assert write_manifest(str(manifest), answers) == 2
    assert manifest.read_text().splitlines()[0] == "uri,label"
    items = read_manifest(str(manifest))
    assert [(Path(i.uri), i.label) for i in items] == [(paths[1], "menu"), (paths[2], "ambiance")]


def test_import_refuses_an_unknown_label(tmp_path: Path) -> None:
    export = tmp_path / "relabel.csv"
    write_csv(str(export), EXPORT_FIELDS, [{"uri": "/a.jpg", "corrected_label": "pizza"}])
    with pytest.raises(DataError, match=r"line 2: label 'pizza' is not a class"):
        read_relabels(str(export), CLASSES)


def test_import_can_keep_the_rows_a_moderator_left_unchanged(tmp_path: Path) -> None:
    """A find-label-issues CSV: no image_id; an empty corrected_label keeps the label."""
    issues = tmp_path / "label_issues.csv"
    issues.write_text(
        "uri,label,suggested_label,confidence,reason,corrected_label\n"
        "/d/a.jpg,food,menu,0.9,label quality 0.01,menu\n"
        "/d/b.jpg,food,human,0.6,label quality 0.20,\n"
    )
    answers, skipped = read_relabels(str(issues), keep_unchanged=True)
    assert [(a.image_id, a.label) for a in answers] == [("/d/a.jpg", "menu"), ("/d/b.jpg", "food")]
    assert skipped == 0
    assert len(read_relabels(str(issues))[0]) == 1


def test_import_needs_the_export_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,class\n/a.jpg,food\n")
    with pytest.raises(DataError, match="lacks"):
        read_relabels(str(bad))


def test_list_collection_from_a_folder_and_a_manifest(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "photos" / "sub", 2)
    (tmp_path / "photos" / "README.txt").write_text("not a photo")
    events = list(list_collection(str(tmp_path / "photos")))
    assert [e.uri for e in events] == [str(p.resolve()) for p in paths]
    assert all(e.image_id == e.uri and e.source == "backfill" for e in events)

    manifest = tmp_path / "photos" / "list.csv"
    manifest.write_text("uri,image_id,restaurant_id\nsub/img000.png,x1,r5\nsub/img001.png,,\n")
    events = list(list_collection(str(manifest)))
    assert [(e.image_id, e.restaurant_id) for e in events] == [
        ("x1", "r5"),
        (str(paths[1].resolve()), None),
    ]


class _ProbingScorer(FakeScorer):
    """FakeScorer with the probe() of the HTTP client."""

    def probe(self):
        from _scoring import png_bytes

        return self.infer([png_bytes((128, 128, 128))])


def test_backfill_is_resumable_and_skips_what_is_scored(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    write_images(tmp_path / "photos", 7)
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    scorer = _ProbingScorer(version="5")
    cfg = BackfillConfig(batch_size=3, check_chunk=4)
    first = score_collection(str(tmp_path / "photos"), scorer, repo, cfg, progress=False)
    assert (first.listed, first.skipped, first.scored, first.failed) == (8, 0, 7, 1)
    assert first.failures == {"invalid_image": 1}
    assert repo.count_scores("clazzify", "5") == 7

    scorer.calls.clear()
    second = score_collection(str(tmp_path / "photos"), scorer, repo, cfg, progress=False)
    assert (second.skipped, second.scored) == (7, 0)
    assert scorer.calls == [1, 1]  # the version probe, then only the broken file again

    scorer.version = "6"  # a new champion scores everything again under its own version
    third = score_collection(str(tmp_path / "photos"), scorer, repo, cfg, progress=False)
    assert third.scored == 7 and repo.count_scores("clazzify") == 14


def test_backfill_never_moves_a_known_photo(tmp_path: Path, repo: ScoreRepository) -> None:
    first, second = write_images(tmp_path / "photos", 2)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uri,image_id\n{first},p1\n")
    score_collection(str(manifest), _ProbingScorer(version="5"), repo, BackfillConfig(),
                     progress=False)
    manifest.write_text(f"uri,image_id\n{second},p1\n")  # the same id, another photo
    report = score_collection(str(manifest), _ProbingScorer(version="6"), repo,
                              BackfillConfig(), progress=False)
    assert report.failures == {"id_conflict": 1} and report.scored == 0
    assert repo.image_uris(["p1"]) == {"p1": str(first)}


def test_backfill_counts_the_unknown_photos(tmp_path: Path, repo: ScoreRepository) -> None:
    from _scoring import png_bytes

    photos = tmp_path / "photos"
    write_images(photos, 4)
    for i, grey in enumerate((90, 160)):
        (photos / f"grey{i}.png").write_bytes(png_bytes((grey, grey, grey)))
    scorer = _ProbingScorer(version="8")
    scorer.ood = True
    report = score_collection(str(photos), scorer, repo, BackfillConfig(batch_size=2, check_chunk=4),
                              progress=False)
    flagged = repo.unknown_images(model_name="clazzify")
    assert report.scored == 6 and report.unknown == len(flagged) and report.judged == 6
    assert {Path(r["uri"]).name for r in flagged} >= {"grey0.png", "grey1.png"}
    assert report.summary().endswith(f"; unknown (none of the classes): {report.unknown} of 6")

    older = score_collection(str(photos), _ProbingScorer(version="9"), repo, progress=False)
    assert older.judged == 0 and "no out-of-distribution score" in older.summary()
