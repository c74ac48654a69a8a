"""The one manifest reader that training's ingest and the scoring backfill share."""

from __future__ import annotations

from pathlib import Path

import pytest

from clazzify.core.errors import DataError
from clazzify.core.manifest import is_manifest, read_manifest_rows

pytestmark = pytest.mark.unit


def test_csv_and_jsonl_rows_resolve_relative_uris(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("uri,label,n\nimgs/a.png, food ,1\n/abs/b.png,menu,\n")
    (tmp_path / "m.jsonl").write_text(
        '{"uri": "imgs/a.png", "label": " food ", "n": 1}\n\n'
        '{"uri": "/abs/b.png", "label": "menu", "n": null}\n'
    )
    csv_rows = read_manifest_rows(str(tmp_path / "m.csv"), ("uri", "label"))
    jsonl_rows = read_manifest_rows(str(tmp_path / "m.jsonl"), ("uri", "label"))
    expected = [
        {"uri": str(tmp_path / "imgs" / "a.png"), "label": "food", "n": "1"},
        {"uri": "/abs/b.png", "label": "menu", "n": ""},
    ]
    assert [r.values for r in csv_rows] == expected
    assert [r.values for r in jsonl_rows] == expected
    assert [r.line for r in csv_rows] == [2, 3]
    assert [r.line for r in jsonl_rows] == [1, 3]
    assert is_manifest("s3://b/x.jsonl") and not is_manifest("s3://b/photos/")


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("h.csv", "path\nx.png\n", r"lacks \['uri'\]; the first line must name"),
        ("e.csv", "uri\nx.png\n \n", "line 3: the uri is empty"),
        ("j.jsonl", '{"uri": "x.png"}\n[1]\n', "line 2: expected a JSON object with uri, got list"),
        ("n.jsonl", "{nope\n", "line 1: not JSON"),
    ],
)
def test_bad_rows_name_their_line(tmp_path: Path, name: str, text: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=match):
        read_manifest_rows(str(tmp_path / name))
