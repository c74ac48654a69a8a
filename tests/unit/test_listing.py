"""training/listing.py: reading a manifest into items (class folders are listed by test_ingest's runs)."""

import json
from pathlib import Path

import pytest
from _images import write_img

from clazzify.core.errors import DataError
from clazzify.training.listing import read_manifest

pytestmark = pytest.mark.unit


def test_manifest_sources(tmp_path: Path):
    for i in range(6):
        write_img(tmp_path / "imgs" / f"{i}.png", seed=i)
    with (tmp_path / "m.csv").open("w") as f:
        f.write("uri,label,extra\n" + "".join(f"imgs/{i}.png,{'ab'[i % 2]},x\n" for i in range(6)))
    items = read_manifest(str(tmp_path / "m.csv"))
    assert [i.label for i in items] == ["a", "b"] * 3
    assert items[0].uri == str(tmp_path / "imgs" / "0.png")
    (tmp_path / "m.jsonl").write_text(
        "\n".join(json.dumps({"uri": f"imgs/{i}.png", "label": "ab"[i % 2]}) for i in range(6))
    )
    assert read_manifest(str(tmp_path / "m.jsonl")) == items


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.csv", "path,class\nx.png,a\n", "uri,label"),
        ("bad.jsonl", '{"uri": "x.png"}\n', "line 1"),
        ("empty-label.csv", "uri,label\nx.png, \n", "line 2: the label is empty"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path: Path, name, text, match):
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        read_manifest(str(tmp_path / name))


@pytest.mark.parametrize("prefix", ["", "file://"])
def test_a_sub_folder_below_the_class_names_the_photos_origin(tmp_path: Path, prefix: str):
    """root/<label>/<origin>/<file>: the gate report's per-source slices come from here."""
    from clazzify.training.listing import list_source

    write_img(tmp_path / "food" / "app" / "a.png", 1)
    write_img(tmp_path / "food" / "b.png", 2)
    write_img(tmp_path / "menu" / "scraped" / "2024" / "c.png", 3)
    items = {Path(i.uri).name: (i.label, i.origin) for i in list_source(f"{prefix}{tmp_path}")}
    assert items == {"a.png": ("food", "app"), "b.png": ("food", ""), "c.png": ("menu", "scraped")}
