"""CSV formula escaping: every export escapes, relabel-import takes the escape off."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from clazzify.core.csvsafe import escape_cell, unescape_cell
from clazzify.scoring.relabel import EXPORT_FIELDS, read_relabels, write_csv

pytestmark = pytest.mark.unit

HOSTILE = ["=HYPERLINK(\"http://evil\")", "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\tx", "\rx"]


@pytest.mark.parametrize("value", HOSTILE)
def test_formulas_are_escaped_and_the_escape_is_undone(value: str) -> None:
    assert escape_cell(value) == "'" + value
    assert unescape_cell(escape_cell(value)) == value


@pytest.mark.parametrize("value", ["food", "s3://uploads/a.jpg", "'quoted", "", 0.25, None])
def test_plain_cells_are_left_alone(value) -> None:
    assert escape_cell(value) == value


def test_relabel_export_escapes_and_import_restores(tmp_path: Path) -> None:
    out = tmp_path / "relabel.csv"
    uri = str(tmp_path / "=cmd.jpg")
    write_csv(str(out), EXPORT_FIELDS, [{"uri": uri, "image_id": "=HYPERLINK(1)",
                                         "label": "food", "corrected_label": "+menu"}])
    with out.open() as fh:
        [row] = list(csv.DictReader(fh))
    assert row["image_id"] == "'=HYPERLINK(1)" and row["corrected_label"] == "'+menu"
    assert row["uri"] == uri  # an absolute path starts with "/": nothing to escape
    answers, skipped = read_relabels(str(out))
    assert skipped == 0
    assert [(a.image_id, a.uri, a.label) for a in answers] == [("=HYPERLINK(1)", uri, "+menu")]
