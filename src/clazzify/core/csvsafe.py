"""CSV cells that a spreadsheet will not run: the one escape every CSV export uses.

A cell beginning with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is a formula
to Excel, LibreOffice and Google Sheets (OWASP "CSV injection"): an uploaded file name, an
image id or a label chosen by an uploader could run in a moderator's spreadsheet. Such a
cell is written with a leading apostrophe, which spreadsheets show as text; the importers
(:func:`unescape_cell`) take it off again, so a round trip through a spreadsheet loses
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: First characters that make a spreadsheet read a cell as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: Any) -> Any:
    """``value`` with a leading ``'`` when it is text a spreadsheet would evaluate."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def unescape_cell(value: str) -> str:
    """Undo :func:`escape_cell` on a cell read back from a CSV file."""
    if value.startswith("'") and value[1:].startswith(FORMULA_STARTS):
        return value[1:]
    return value


def escape_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Every cell of ``row`` escaped (for ``csv.DictWriter``)."""
    return {k: escape_cell(v) for k, v in row.items()}
