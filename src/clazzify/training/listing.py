"""Listing a source: class folders or a manifest, and the labels people gave that win over them."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clazzify.core import storage
from clazzify.core.errors import DataError
from clazzify.core.manifest import is_manifest, read_manifest_rows
from clazzify.core.ood import NOT_A_CLASS


@dataclass(frozen=True)
class Item:
    """One image as listed by a source, and where its label came from
    (``folder``, ``manifest``, ``manual`` or ``relabel_csv``: the lineage's label sources).

    ``origin`` is where the photo came from, the slice the gate report measures separately:
    a manifest's optional ``source`` column, or the sub-folder below the class folder
    (``root/<label>/<origin>/<file>``); empty when the source does not say.
    """

    uri: str
    label: str
    source: str = "folder"
    origin: str = ""


@dataclass(frozen=True)
class LabelOverride:
    """A label a person gave a photo, which wins over its folder or manifest label.

    Attributes:
        label: the class.
        source: ``manual`` (the scores database's manual labels) or ``relabel_csv``.
    """

    label: str
    source: str = "manual"


def read_manifest(uri: str) -> list[Item]:
    """Read a CSV (``uri,label`` header) or JSONL manifest into items.

    Raises:
        DataError: a row is not an object, lacks ``uri`` or ``label``, or leaves one empty.
    """
    rows = read_manifest_rows(uri, ("uri", "label"))
    return [Item(row.get("uri"), row.get("label"), "manifest", row.get("source")) for row in rows]


def uri_key(uri: str) -> str:
    """A URI as labels are matched on: ``file://`` and relative local paths made absolute."""
    uri = uri.strip()
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    if "://" in uri:
        return uri
    return os.path.abspath(uri)


def read_relabel_overrides(uri: str) -> dict[str, LabelOverride]:
    """The corrected labels of a relabel CSV (``uri``, ``corrected_label``), keyed by :func:`uri_key`.

    Rows with an empty ``corrected_label`` are skipped; a photo answered twice keeps the last.

    Raises:
        DataError: the CSV lacks the columns (names them and the file).
    """
    rows = read_manifest_rows(uri, ("uri",))
    if rows and "corrected_label" not in rows[0].values:
        raise DataError(
            f"{uri}: a relabel CSV needs a corrected_label column (written by relabel-export or "
            "find-label-issues, filled in by moderators)"
        )
    return {
        uri_key(row.get("uri")): LabelOverride(row.get("corrected_label"), "relabel_csv")
        for row in rows
        if row.get("corrected_label") and row.get("corrected_label") != NOT_A_CLASS
    }


def manual_label_overrides(rows: Iterable[Mapping[str, Any]]) -> dict[str, LabelOverride]:
    """Overrides from the scores database's manual labels (rows with ``uri`` and ``label``, as
    ``ScoreRepository.manual_labels()`` returns them; the caller reads the database, so
    training needs no database code). Rows without a URI cannot match a photo and are skipped."""
    return {uri_key(str(r["uri"])): LabelOverride(str(r["label"]), "manual") for r in rows if r.get("uri")}


def apply_label_overrides(
    items: Sequence[Item], overrides: Mapping[str, LabelOverride]
) -> tuple[list[Item], dict[str, int], int]:
    """Give each listed photo the label a person gave it, if any.

    Returns:
        (items, how many labels each source changed, how many overrides matched no listed photo).
    """
    if not overrides:
        return list(items), {}, 0
    out: list[Item] = []
    changed: Counter[str] = Counter()
    used: set[str] = set()
    for item in items:
        key = uri_key(item.uri)
        override = overrides.get(key)
        if override is None:
            out.append(item)
            continue
        used.add(key)
        if override.label != item.label:
            changed[override.source] += 1
        out.append(Item(item.uri, override.label, override.source, item.origin))
    return out, dict(changed), len(set(overrides) - used)


def list_source(source: str) -> list[Item]:
    """List every file of a class-folder source or a manifest."""
    if is_manifest(source):
        return read_manifest(source)
    labels = storage.list_children(source)
    if not labels:
        raise DataError(
            f"{source} has no class sub-folders: lay images out as {source}/<label>/<file> "
            "or pass a CSV/JSONL manifest"
        )
    items: list[Item] = []
    for label in labels:
        folder = storage.join(source, label)
        for uri in storage.list_files(folder):
            if not uri.rsplit("/", 1)[-1].startswith("."):
                # a file:// source lists plain paths: then the path below the folder's path
                rel = uri[len(folder):] if uri.startswith(folder) else os.path.relpath(uri, storage.local_path(folder))
                below = rel.strip("/").split("/")
                items.append(Item(uri, label, origin=below[0] if len(below) > 1 else ""))
    return items
