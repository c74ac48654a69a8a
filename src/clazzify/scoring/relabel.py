"""The relabelling loop: export doubtful photos for moderators, import their answers.

``relabel-export`` writes a CSV with one row per photo that is worth a human look:
its prediction is not confident (top probability below a threshold) or disagrees
with a label a person already gave it. The columns are the relabel format that
``clazzify find-label-issues`` also writes (``uri, label, suggested_label, confidence,
reason, corrected_label``), followed by ``image_id, restaurant_id, model_version``:
``label`` is the label a person gave the photo (empty when none), ``suggested_label``
and ``confidence`` the model's top class and its probability. Moderators fill
``corrected_label``.

``relabel-import`` turns either file into a ``uri,label`` manifest that the training
pipeline's ingest step reads (:func:`clazzify.training.ingest.read_manifest`), and can record
the answers as manual labels.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clazzify.core import storage
from clazzify.core.csvsafe import escape_row, unescape_cell
from clazzify.core.errors import DataError
from clazzify.core.manifest import RELABEL_FIELDS
from clazzify.scoring.labels import NOT_A_CLASS

#: The relabel format's columns, then the scoring database's own.
EXPORT_FIELDS = (*RELABEL_FIELDS, "image_id", "restaurant_id", "model_version")


@dataclass(frozen=True)
class Relabel:
    """One answer of a moderator."""

    image_id: str
    uri: str
    label: str


def export_rows(candidates: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows of the export CSV from :meth:`ScoreRepository.relabel_candidates` results.

    Photos a moderator marked "not a class" are left out: they are settled, and their mark
    is no class label a spreadsheet round trip could carry into training.
    """
    return [
        {
            "uri": str(c["uri"]),
            "label": c.get("manual_label") or "",
            "suggested_label": str(c["predicted_label"]),
            "confidence": f"{float(c['probability']):.4f}",
            "reason": "disagrees" if c.get("disagrees") else "low_confidence",
            "corrected_label": "",
            "image_id": str(c["image_id"]),
            "restaurant_id": "" if c.get("restaurant_id") is None else str(c["restaurant_id"]),
            "model_version": str(c["model_version"]),
        }
        for c in candidates
        if c.get("manual_label") != NOT_A_CLASS
    ]


def write_csv(
    uri: str, fields: Sequence[str], rows: Iterable[Mapping[str, Any]], *, escape: bool = True
) -> int:
    """Write ``rows`` as CSV to a local path or ``s3://`` URI; returns the row count.

    ``escape``: cells a spreadsheet would run as formulas get a leading ``'``
    (:mod:`clazzify.core.csvsafe`); off for machine-read files such as the training manifest.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore")
    writer.writeheader()
    n = 0
    for row in rows:
        writer.writerow(escape_row(row) if escape else row)
        n += 1
    storage.write_bytes(uri, buf.getvalue().encode())
    return n


def read_relabels(
    uri: str, class_names: Sequence[str] = (), *, keep_unchanged: bool = False
) -> tuple[list[Relabel], int]:
    """Read a moderated relabel CSV; the rows that carry a label to train on.

    Args:
        uri: the CSV (local path or ``s3://``).
        class_names: when given, every label must be one of them.
        keep_unchanged: also keep rows whose ``corrected_label`` is empty, with their
            ``label`` (a reviewed photo whose label was right); rows with neither are
            always skipped.

    Returns:
        (answers, skipped): the rows kept, and how many were skipped (no label, or a
        ``not_a_class`` mark, which is never a class label).

    Raises:
        DataError: a column is missing or a label is not a known class (names the line).
    """
    text = storage.read_bytes(uri).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = {"uri", "corrected_label"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(
            f"{uri}: header {reader.fieldnames} lacks {sorted(missing)}; pass a relabel CSV "
            "(from `clazzify relabel-export` or `find-label-issues`) with corrected_label "
            "filled in"
        )
    known = set(class_names)
    answers: list[Relabel] = []
    skipped = 0
    for lineno, raw in enumerate(reader, start=2):
        # Undo the export's formula escape (a spreadsheet keeps the apostrophe).
        row = {k: unescape_cell(v) if isinstance(v, str) else v for k, v in raw.items()}
        label = (row.get("corrected_label") or "").strip()
        if not label and keep_unchanged:
            label = (row.get("label") or "").strip()
        if not label or label == NOT_A_CLASS:
            # A "not a class" mark is no class label: the next run reads the marks from
            # the database (read_not_a_class_marks), never from a manifest.
            skipped += 1
            continue
        if known and label not in known:
            raise DataError(
                f"{uri} line {lineno}: label {label!r} is not a class of the model "
                f"({', '.join(sorted(known))}); fix the label or pass --classes"
            )
        uri_value = (row.get("uri") or "").strip()
        if not uri_value:
            raise DataError(f"{uri} line {lineno}: the uri column is empty")
        answers.append(Relabel((row.get("image_id") or "").strip() or uri_value, uri_value, label))
    return answers, skipped


def write_manifest(uri: str, answers: Sequence[Relabel]) -> int:
    """Write the ``uri,label`` manifest that ``clazzify ingest`` reads; one row per photo."""
    latest = {a.uri: a for a in answers}  # a photo answered twice keeps its last answer
    # Read verbatim by ingest, never by a spreadsheet: not escaped.
    return write_csv(
        uri,
        ("uri", "label"),
        ({"uri": a.uri, "label": a.label} for a in latest.values()),
        escape=False,
    )
