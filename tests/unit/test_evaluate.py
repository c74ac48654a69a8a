"""training/evaluate.py: the gate report's per-source slice table, so a weak source shows."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clazzify.training.evaluate import compute_metrics, gate_markdown, row_sources, source_slices
from clazzify.training.gate import GateConfig, passes_gate
from clazzify.training.stats import wilson_interval

pytestmark = pytest.mark.unit

NAMES = ["food", "menu"]


def planted() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """40 app photos all right, 40 scraped photos half wrong (every menu called food), 4 unknown."""
    labels = np.array([0, 1] * 20 + [0, 1] * 20 + [0, 1, 0, 1])
    predicted = labels.copy()
    predicted[40:80][labels[40:80] == 1] = 0
    sources = ["app"] * 40 + ["scraped"] * 40 + [""] * 4
    return labels, np.eye(2)[predicted], sources


def test_a_weak_source_shows_in_the_slice_table():
    labels, probs, sources = planted()
    slices = {s.source: s for s in source_slices(labels, probs, sources, NAMES)}
    assert list(slices) == ["app", "scraped", "(unknown)"]  # largest first
    scraped = slices["scraped"]
    assert (scraped.n, scraped.accuracy, scraped.accuracy_interval) == (40, 0.5, wilson_interval(20, 40))
    assert scraped.recall == {"food": 1.0, "menu": 0.0} and scraped.support == {"food": 20, "menu": 20}
    assert scraped.weak and not slices["app"].weak and not slices["(unknown)"].weak  # 4 photos: too few to say

    m = compute_metrics(labels, probs, NAMES)
    text = gate_markdown(passes_gate(m.accuracy, m.recall, GateConfig()), m, list(slices.values()))
    lo, hi = wilson_interval(20, 40)
    assert f"| **scraped** (weak) | 40 | 0.500 ({lo:.3f}-{hi:.3f}) | 1.000 (20) | 0.000 (20) |" in text
    assert "| source | n | accuracy (95% CI) | recall food | recall menu |" in text


def test_no_source_known_means_no_table():
    labels, probs, _ = planted()
    assert source_slices(labels, probs, [""] * len(labels), NAMES) == []
    m = compute_metrics(labels, probs, NAMES)
    assert "Per source" not in gate_markdown(passes_gate(m.accuracy, m.recall, GateConfig()), m, [])


def test_the_source_goes_from_folder_and_manifest_to_each_test_row(tmp_path: Path):
    """root/<label>/<source>/<file> and a manifest's `source` column reach the split
    manifest, and every HDF5 row is matched back to its source by content hash."""
    from clazzify.training.ingest import IngestConfig, ingest_images, read_split_manifest
    from clazzify.training.listing import list_source
    from clazzify.training.preprocess import PreprocessConfig, build_hdf5

    rng = np.random.default_rng(0)
    lines = ["uri,label,source"]
    for label in NAMES:
        for i in range(10):
            origin = "app" if i % 2 else "scraped"
            path = tmp_path / "photos" / label / origin / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
            lines.append(f"{path},{label},{origin}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    by_folder = {Path(i.uri).name + i.label: i.origin for i in list_source(str(tmp_path / "photos"))}
    by_manifest = {Path(i.uri).name + i.label: i.origin for i in list_source(str(tmp_path / "m.csv"))}
    assert by_folder == by_manifest and set(by_folder.values()) == {"app", "scraped"}

    cfg = IngestConfig(near_duplicate_distance=-1, val_fraction=0.2, test_fraction=0.3)
    ingest_images(str(tmp_path / "photos"), tmp_path / "split.csv", tmp_path / "r", cfg, progress=False)
    records = read_split_manifest(tmp_path / "split.csv")
    assert all(r.source == ("app" if int(Path(r.uri).stem) % 2 else "scraped") for r in records)
    paths = build_hdf5(tmp_path / "split.csv", tmp_path / "data", PreprocessConfig(image_size=16, workers=1),
                       progress=False)
    test = [r for r in records if r.split == "test"]
    assert sorted(row_sources([paths["test"]], tmp_path / "split.csv")) == sorted(r.source for r in test)
