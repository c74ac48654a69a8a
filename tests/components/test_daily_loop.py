"""The daily loop holds as the data grows: real ingest, HDF5, training, evaluation, gate and
registry (MLflow on SQLite) over growth rounds of small synthetic data (32 px).

Every round asserts, by content hash read from the runs' own manifests, that no photo the
champion and challenger were compared on was in either model's training data (train or val).
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw

from clazzify.registry.register import register_model
from clazzify.registry.tracking import TrackingConfig
from clazzify.training.demo_data import write_demo_data
from clazzify.training.evaluate import evaluate_and_gate
from clazzify.training.gate import GateConfig
from clazzify.training.ingest import IngestConfig, ingest_images, manual_label_overrides, read_split_manifest
from clazzify.training.lineage import champion_lineage
from clazzify.training.preprocess import PreprocessConfig, build_hdf5
from clazzify.training.train import TrainConfig, train_model

pytestmark = [pytest.mark.components, pytest.mark.slow]

MODEL = "loop-test"
GATE = GateConfig(min_accuracy=0.4, max_regression=0.05, min_class_recall=0.0)


def draw_drinks(root: Path, n: int, seed: int) -> None:
    """A fifth class: glasses (tall rounded bars) on a plain background."""
    rng = np.random.default_rng(seed)
    (root / "drinks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (48, 48), tuple(int(v) for v in rng.integers(150, 255, 3)))
        d = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 4))):
            x = int(rng.integers(4, 36))
            d.rounded_rectangle((x, 10, x + 8, 44), 3, fill=tuple(int(v) for v in rng.integers(0, 120, 3)))
        img.save(root / "drinks" / f"synthetic-drinks-{seed}-{i:03d}.png")


def add_photos(root: Path, per_class: int, seed: int) -> None:
    """Add freshly drawn photos of the four demo classes (new file names, new bytes)."""
    tmp = root.parent / f"new-{seed}"
    write_demo_data(tmp, per_class=per_class, size=48, seed=seed, bad_files=False)
    for path in tmp.rglob("*.*"):
        target = root / path.parent.name / f"s{seed}-{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)


def seen_by(manifest: Path) -> set[str]:
    return {r.sha256 for r in read_split_manifest(manifest) if r.split in ("train", "val")}


def run_day(source: str, work: Path, uri: str, overrides=None, epochs: int = 8, gate: GateConfig = GATE) -> dict:
    """One pipeline run (the pipeline's steps, called directly); registers when the gate passes."""
    work.mkdir(parents=True)
    champion = champion_lineage(MODEL, work / "champion", uri)
    report = ingest_images(source, work / "manifest.csv", work / "ingest", IngestConfig(seed=7), progress=False,
                           label_overrides=overrides, champion_data=champion[1] if champion else None)
    build_hdf5(work / "manifest.csv", work / "data", PreprocessConfig(image_size=32, workers=1), progress=False)
    cfg = TrainConfig(architecture="compact", epochs=epochs, batch_size=16, learning_rate=3e-3, patience=0)
    trained = train_model(work / "data", work / "model", cfg, tracking=TrackingConfig(uri, "loop"), verbose=0)
    tracking = TrackingConfig(uri, "loop", run_id=trained.run_id)
    metrics, decision = evaluate_and_gate(
        trained.bundle_dir, work / "data", work / "eval", gate, model_name=MODEL, tracking=tracking,
        manifest=work / "manifest.csv", ingested_at=report.ingested_at, source=source,
    )
    version = None
    if decision.passed:
        version = register_model(trained.bundle_dir, work / "eval" / "gate_report.json", tracking, model_name=MODEL)
    comparison = work / "eval" / "comparison.json"
    return {
        "report": report, "metrics": metrics, "decision": decision, "version": version,
        "manifest": work / "manifest.csv",
        "comparison": json.loads(comparison.read_text()) if comparison.exists() else None,
    }


def assert_compared_on_unseen(day: dict, champion_manifest: Path) -> None:
    compared = set(day["comparison"]["compared_sha256"])
    assert compared, "nothing was compared"
    assert not compared & seen_by(champion_manifest), "the champion trained on a compared photo"
    assert not compared & seen_by(day["manifest"]), "the challenger trained on a compared photo"


def splits_by_hash(manifest: Path) -> dict[str, str]:
    return {r.sha256: r.split for r in read_split_manifest(manifest)}


def test_three_growth_rounds_and_planted_decisions(tmp_path: Path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    root = tmp_path / "photos"
    write_demo_data(root, per_class=30, size=48, seed=1, bad_files=False)

    # the first champion: a weak model from few photos and epochs, registered by the absolute gate
    day0 = run_day(str(root), tmp_path / "day0", uri, epochs=2, gate=GateConfig(min_accuracy=0, min_class_recall=0))
    assert day0["decision"].passed and day0["version"] == "1", day0["decision"].reasons
    assert day0["comparison"] is None  # no champion yet
    assert day0["report"].new_since_champion is None

    # Round 1: more photos. A challenger trained on more, correctly labelled data wins.
    add_photos(root, per_class=40, seed=2)
    day1 = run_day(str(root), tmp_path / "day1", uri)
    assert day1["report"].new_since_champion == 4 * 40
    before, after = splits_by_hash(day0["manifest"]), splits_by_hash(day1["manifest"])
    assert all(after[h] == s for h, s in before.items()), "a photo changed split as the collection grew"
    assert_compared_on_unseen(day1, day0["manifest"])
    assert day1["decision"].passed and day1["version"] == "2", day1["decision"].reasons
    champion_manifest = day1["manifest"]

    # Planted failure: the same photos with shuffled labels lose and are not registered.
    rows = read_split_manifest(day1["manifest"])
    labels = [r.label for r in rows]
    random.Random(0).shuffle(labels)
    shuffled = tmp_path / "shuffled.csv"
    with shuffled.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        writer.writerows((r.uri, label) for r, label in zip(rows, labels, strict=True))
    bad = run_day(str(shuffled), tmp_path / "shuffled", uri)
    assert_compared_on_unseen(bad, champion_manifest)
    assert not bad["decision"].passed and bad["version"] is None
    assert bad["decision"].comparison.challenger_accuracy < bad["decision"].comparison.champion_accuracy

    # Round 2: a fifth class. Scored by class name, compared on the shared classes, said plainly.
    draw_drinks(root, 40, seed=3)
    day2 = run_day(str(root), tmp_path / "day2", uri)
    assert_compared_on_unseen(day2, champion_manifest)
    comparison = day2["decision"].comparison
    assert comparison.classes_added == ["drinks"] and comparison.excluded_classes > 0
    assert any("class set changed" in r for r in day2["decision"].reasons)
    assert "drinks" in day2["metrics"].class_names  # absolute thresholds see every class
    if day2["decision"].passed:
        champion_manifest = day2["manifest"]

    # Round 3: moderators relabel photos; the next run learns the corrected labels.
    rows = {r.uri: r for r in read_split_manifest(day2["manifest"])}
    moved = sorted(u for u in rows if "/food/" in u)[:8]
    for u in moved:  # planted mislabels: eight food photos filed as menu
        Path(u).rename(Path(u.replace("/food/", "/menu/")))
    manual = [{"uri": u, "label": "food"} for u in (m.replace("/food/", "/menu/") for m in moved)]
    day3 = run_day(str(root), tmp_path / "day3", uri, overrides=manual_label_overrides(manual))
    assert day3["report"].label_overrides == {"manual": 8}
    assert_compared_on_unseen(day3, champion_manifest)
    with h5py.File(tmp_path / "day3" / "data" / "train.h5", "r") as f:
        names = json.loads(f.attrs["class_names"])
        got = dict(zip(f["uris"].asstr()[:], (names[i] for i in f["labels"][:]), strict=True))
    relabelled = [got[m["uri"]] for m in manual if m["uri"] in got]
    assert relabelled and set(relabelled) == {"food"}

    # Lineage in MLflow: the dataset input, the lineage artifact, the model card.
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version(MODEL, "2").run_id)
    inputs = run.inputs.dataset_inputs
    assert inputs and json.loads(next(t.value for t in inputs[0].tags if t.key == "per_class"))["food"] > 0
    card = client.get_model_version(MODEL, "2").description
    assert "Compared with champion v1 on" in card and "| food |" in card
    version, lineage = champion_lineage(MODEL, tmp_path / "lineage", uri)
    assert lineage is not None and len(lineage) == len(read_split_manifest(champion_manifest))
