"""Manifests: the one reader of the CSV/JSONL photo lists that training and scoring take.

A manifest is a ``.csv`` file with a header line or a ``.jsonl`` file of one JSON object
per line, local or on S3. Each row names a photo by ``uri``; a relative ``uri`` is resolved
against the manifest's own folder. Training's ingest reads ``uri,label`` rows, the scoring
backfill reads ``uri`` (plus optional ``image_id``, ``restaurant_id``, ``source``).
The relabel CSV that moderators correct is a manifest too; its columns are
:data:`RELABEL_FIELDS`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

from clazzify.core import storage
from clazzify.core.errors import DataError

#: File suffixes read as manifests rather than listed as folders.
MANIFEST_SUFFIXES = (".csv", ".jsonl")

#: Columns of a relabel CSV, what moderators review and correct: written by training's
#: ``find-label-issues`` and (followed by the scoring database's ids) by scoring's
#: ``relabel-export``; ``relabel-import`` reads ``uri`` and ``corrected_label`` back.
RELABEL_FIELDS = ("uri", "label", "suggested_label", "confidence", "reason", "corrected_label")


@dataclass(frozen=True)
class ManifestRow:
    """One row of a manifest.

    Attributes:
        line: the row's line number in the file (for error messages).
        values: column -> stripped text (``""`` for a missing or null value); ``uri``
            resolved against the manifest's folder.
    """

    line: int
    values: dict[str, str]

    def get(self, column: str) -> str:
        return self.values.get(column, "")


def is_manifest(source: str) -> bool:
    """True when ``source`` names a manifest file (by its suffix), not a folder or prefix."""
    return source.endswith(MANIFEST_SUFFIXES)


def resolve_uri(manifest_uri: str, uri: str) -> str:
    """``uri`` as written in a manifest, made absolute against the manifest's folder."""
    if not uri or "://" in uri or uri.startswith("/"):
        return uri
    base = manifest_uri.rsplit("/", 1)[0] if "/" in manifest_uri else "."
    return storage.join(base, uri)


def _text(value: object) -> str:
    return "" if value is None else str(value).strip()


def read_manifest_rows(uri: str, required: Sequence[str] = ("uri",)) -> list[ManifestRow]:
    """Every row of the CSV/JSONL manifest at ``uri``, each ``required`` column non-empty.

    Raises:
        DataError: a JSONL line is not a JSON object, the CSV header lacks a required
            column, or a row leaves one empty (the message names the line).
        StorageError: the manifest cannot be read.
    """
    text = storage.read_bytes(uri).decode("utf-8-sig")
    rows: list[ManifestRow] = []
    if uri.endswith(".jsonl"):
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(f"{uri} line {line}: not JSON: {e}") from e
            if not isinstance(obj, dict):
                raise DataError(
                    f"{uri} line {line}: expected a JSON object with {', '.join(required)}, "
                    f"got {type(obj).__name__}"
                )
            rows.append(ManifestRow(line, {str(k): _text(v) for k, v in obj.items()}))
    else:
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(
                f"{uri}: manifest header {reader.fieldnames} lacks {missing}; "
                f"the first line must name at least the columns {','.join(required)}"
            )
        for row in reader:
            values = {k: _text(v) for k, v in row.items() if isinstance(k, str)}
            rows.append(ManifestRow(reader.line_num, values))
    for row in rows:
        empty = [c for c in required if not row.get(c)]
        if empty:
            raise DataError(
                f"{uri} line {row.line}: the {' and '.join(empty)} is empty; "
                "every row needs " + ", ".join(required)
            )
        if "uri" in row.values:
            row.values["uri"] = resolve_uri(uri, row.values["uri"])
    return rows
