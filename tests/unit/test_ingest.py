import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _images import write_img
from PIL import Image

from clazzify.core.errors import ConfigError, DataError
from clazzify.training.ingest import (
    IngestConfig,
    ingest_images,
    read_split_manifest,
)

pytestmark = pytest.mark.unit


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    for c, label in enumerate(("cats", "dogs")):
        for i in range(10):
            write_img(root / label / f"{i}.png", seed=c * 100 + i)
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "cats" / "empty.jpg").write_bytes(b"")
    write_img(root / "dogs" / "tiny.png", seed=999, size=(10, 10))
    (root / "dogs" / "copy-of-3.png").write_bytes((root / "dogs" / "3.png").read_bytes())
    (root / "dogs" / "cat-as-dog.png").write_bytes((root / "cats" / "0.png").read_bytes())
    return root


def test_ingest_quarantines_dedupes_and_splits(source: Path, tmp_path: Path):
    out = tmp_path / "out"
    report = ingest_images(str(source), out / "manifest.csv", out, IngestConfig(seed=1), progress=False)
    assert report.listed == 25
    assert report.quarantined == {"corrupt": 1, "empty": 1, "too_small": 1, "conflicting_labels": 2}
    assert report.duplicates_removed == 1
    rows = read_split_manifest(out / "manifest.csv")
    assert len(rows) == report.accepted == 19  # 9 cats (one copy quarantined) + 10 dogs
    assert len({r.sha256 for r in rows}) == len(rows)  # no bytes twice
    assert {r.split for r in rows} == {"train", "val", "test"}
    for label in ("cats", "dogs"):
        per = [r for r in rows if r.label == label]
        assert sum(r.split != "train" for r in per) >= 2  # every class reaches val and test
    quarantine = list(csv.DictReader((out / "quarantine.csv").open()))
    assert {q["reason"] for q in quarantine} == set(report.quarantined)
    assert all(q["detail"] for q in quarantine)
    assert json.loads((out / "report.json").read_text())["accepted"] == 19
    assert "| cats |" in (out / "report.md").read_text()
    # The source is read-only to ingest: nothing is lost.
    assert (source / "cats" / "broken.png").exists()


def test_split_is_seeded(source: Path, tmp_path: Path):
    def run(seed, name):
        ingest_images(str(source), tmp_path / name / "m.csv", tmp_path / name, IngestConfig(seed=seed), progress=False)
        return [(r.uri, r.split) for r in read_split_manifest(tmp_path / name / "m.csv")]

    assert run(5, "a") == run(5, "b")
    assert run(5, "a") != run(6, "c")


def test_missing_or_flat_source(tmp_path: Path):
    with pytest.raises(Exception, match="does not exist"):
        ingest_images(str(tmp_path / "nope"), tmp_path / "m.csv", tmp_path, progress=False)
    write_img(tmp_path / "flat" / "a.png", 1)
    with pytest.raises(DataError, match="no class sub-folders"):
        ingest_images(str(tmp_path / "flat"), tmp_path / "m.csv", tmp_path, progress=False)


@pytest.mark.parametrize(
    "kwargs",
    [{"val_fraction": 1.0}, {"test_fraction": -0.1}, {"val_fraction": 0.5, "test_fraction": 0.5}],
)
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        IngestConfig(**kwargs)


def crafted_copies(img: Image.Image) -> list[Image.Image]:
    """Resized, re-encoded and lightly cropped copies, as a platform's uploads hold them."""
    import io

    w, h = img.size
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=45)
    return [
        img.resize((w // 2, h // 2)),
        Image.open(io.BytesIO(buf.getvalue())).convert("RGB"),
        img.crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95))),
        img.crop((int(w * 0.03), 0, w, h)).resize((w // 3, h // 3)),
    ]


def photo_like(rng: np.random.Generator) -> Image.Image:
    """Smooth random structure plus fine noise: unrelated ones hash far apart."""
    coarse = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)).resize((160, 120), Image.BICUBIC)
    fine = rng.integers(-12, 13, (120, 160, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=int) + fine, 0, 255).astype(np.uint8))


def test_near_duplicates_never_span_splits(tmp_path: Path):
    root = tmp_path / "src"
    for c, label in enumerate(("ambiance", "food", "human", "menu")):
        rng = np.random.default_rng(c)
        for i in range(12):
            img = photo_like(rng)
            (root / label).mkdir(parents=True, exist_ok=True)
            img.save(root / label / f"{i}.png")
            if i < 3:  # three originals per class get four near-copies each
                for k, copy in enumerate(crafted_copies(img)):
                    copy.save(root / label / f"{i}-copy{k}.jpg", quality=90)
    report = ingest_images(str(root), tmp_path / "m.csv", tmp_path / "r", IngestConfig(seed=0), progress=False)
    rows = read_split_manifest(tmp_path / "m.csv")
    by_original: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        stem = Path(r.uri).stem.split("-copy")[0]
        by_original.setdefault((r.label, stem), set()).add(r.split)
    assert all(len(splits) == 1 for splits in by_original.values()), by_original
    copied = [g for g in report.near_duplicate_groups if any("-copy" in u for u in g)]
    assert len(copied) == 12 and all(len(g) >= 5 for g in copied)  # every copy found its original
    assert sum(len(g) for g in report.near_duplicate_groups) == 12 * 5  # unrelated images stay apart
    assert "Near-duplicate groups" in (tmp_path / "r" / "report.md").read_text()


@pytest.mark.parametrize("pixel_cache", [False, True])
def test_truncated_large_jpegs_are_quarantined_by_the_draft_decode(tmp_path: Path, pixel_cache: bool):
    """Draft decoding skips most of the inverse DCT but still reads the whole bitstream."""
    import io

    root = tmp_path / "src"
    for c, label in enumerate(("cats", "dogs")):
        for i in range(8):
            write_img(root / label / f"{i}.png", seed=500 + c * 100 + i)
    for side in (600, 1100):  # drafted to 1/2 and 1/4 scale
        buf = io.BytesIO()
        y, x = np.mgrid[:side, :side]
        Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buf, "JPEG")
        (root / "cats" / f"cut-{side}.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    kw = {"pixel_cache": tmp_path / "px", "pixel_size": 64} if pixel_cache else {}
    report = ingest_images(str(root), tmp_path / "m.csv", tmp_path / "r", IngestConfig(seed=1), progress=False, **kw)
    assert report.quarantined == {"corrupt": 2}
    assert report.accepted == 16


def test_worker_processes_decide_and_cache_exactly_what_threads_do(demo_dir: Path, tmp_path: Path, monkeypatch):
    """Local sets of PROCESS_MIN_ITEMS photos or more are decoded in worker processes, which
    write their pixel rows themselves: same manifest, quarantine and cache as threads."""
    import h5py

    from clazzify.training import ingest as ingest_module

    out = {}
    for mode, minimum in (("threads", 10**9), ("processes", 0)):
        monkeypatch.setattr(ingest_module, "PROCESS_MIN_ITEMS", minimum)
        report = ingest_images(str(demo_dir), tmp_path / mode / "m.csv", tmp_path / mode, IngestConfig(workers=2),
                               progress=False, pixel_cache=tmp_path / mode / "px", pixel_size=32)
        with h5py.File(tmp_path / mode / "px" / "pixels-00000.h5") as f:
            digests = f["sha256"].asstr()[:]
            rows = {d: f["images"][i] for i, d in enumerate(digests) if d}
        out[mode] = ((tmp_path / mode / "m.csv").read_text(), report.quarantined, rows)
    assert out["threads"][:2] == out["processes"][:2]
    assert out["threads"][2].keys() == out["processes"][2].keys() and len(out["threads"][2]) > 90
    for digest, row in out["threads"][2].items():
        np.testing.assert_array_equal(row, out["processes"][2][digest])


def test_prepare_ingest_reads_people_labels_csv_last_and_needs_a_reader(tmp_path: Path):
    """The setup both the component and `clazzify ingest` call: the database's manual labels
    (through the reader the entry point passes), then the relabel CSV's, which win."""
    from clazzify.training.ingest import prepare_ingest

    a, b = str(tmp_path / "a.png"), str(tmp_path / "b.png")
    csv_path = tmp_path / "relabel.csv"
    csv_path.write_text(f"uri,corrected_label\n{b},drink\n")
    asked = []

    def reader(url: str) -> list[dict]:
        asked.append(url)
        return [{"uri": a, "label": "menu"}, {"uri": b, "label": "food"}, {"uri": None, "label": "x"}]

    setup = prepare_ingest(labels_from="sqlite:///s.db", relabel_csv=str(csv_path), read_manual_labels=reader)
    assert asked == ["sqlite:///s.db"]
    assert {k: (v.label, v.source) for k, v in setup.label_overrides.items()} == {
        a: ("menu", "manual"), b: ("drink", "relabel_csv")}
    assert setup.champion_data is None and setup.champion_version is None
    with pytest.raises(ConfigError, match="labels_from='sqlite:///s.db' needs a manual-label reader"):
        prepare_ingest(labels_from="sqlite:///s.db")
