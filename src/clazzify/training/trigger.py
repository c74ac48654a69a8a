"""When to retrain: enough new photos or enough new moderators' labels since the champion's
data set. The decision is a pure function (:func:`should_retrain`); :func:`gather_evidence`
counts what it needs (content hashes of the source against the champion's lineage, and
manual labels given after the champion's data set was read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from tqdm.auto import tqdm

from clazzify.core import storage
from clazzify.core.errors import ConfigError
from clazzify.core.imaging import content_hash
from clazzify.training.lineage import DatasetLineage
from clazzify.training.listing import list_source


@dataclass(frozen=True)
class RetrainPolicy:
    """Retrain when at least ``min_new_photos`` photos or ``min_new_labels`` manual labels
    have arrived since the champion's data set (0 turns that condition off; with both off,
    every check retrains)."""

    min_new_photos: int = 1000
    min_new_labels: int = 100

    def __post_init__(self) -> None:
        for name in ("min_new_photos", "min_new_labels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")


@dataclass(frozen=True)
class Evidence:
    """What arrived since the champion's data set; None: no champion (nothing to compare)."""

    new_photos: int | None
    new_labels: int | None  # class labels and "not a class" marks together
    champion_version: str | None = None
    new_not_a_class: int | None = None  # of new_labels, the "not a class" marks


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    evidence: Evidence

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def should_retrain(evidence: Evidence, policy: RetrainPolicy) -> RetrainDecision:
    """Decide from counts alone (table-tested)."""
    if evidence.new_photos is None:
        return RetrainDecision(True, "no champion data set to compare with: train one", evidence)
    if policy.min_new_photos == 0 and policy.min_new_labels == 0:
        return RetrainDecision(True, "both thresholds are off: retrain on every check", evidence)
    labels = evidence.new_labels or 0
    if policy.min_new_photos and evidence.new_photos >= policy.min_new_photos:
        return RetrainDecision(
            True, f"{evidence.new_photos} new photos >= min_new_photos {policy.min_new_photos}", evidence
        )
    marks = f" ({evidence.new_not_a_class} of them 'not a class')" if evidence.new_not_a_class else ""
    if policy.min_new_labels and labels >= policy.min_new_labels:
        return RetrainDecision(
            True, f"{labels} new manual labels{marks} >= min_new_labels {policy.min_new_labels}", evidence
        )
    return RetrainDecision(
        False,
        f"{evidence.new_photos} new photos (< {policy.min_new_photos or 'off'}) and {labels} new manual labels"
        f"{marks} (< {policy.min_new_labels or 'off'}) since champion v{evidence.champion_version}",
        evidence,
    )


def hash_source(source: str, workers: int = 0, progress: bool = True) -> list[str]:
    """Content hash of every file a source lists (bytes only: no decoding, so a file that ingest
    quarantines counts as new until it is removed)."""
    items = list_source(source)
    workers = workers or 2 * (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(lambda i: content_hash(storage.read_bytes(i.uri)), items), total=len(items),
                         desc="hash", unit="file", disable=not progress))


def gather_evidence(
    source: str,
    champion: tuple[str, DatasetLineage | None] | None,
    label_times: Sequence | None = None,
    *,
    mark_times: Sequence = (),
    progress: bool = True,
) -> Evidence:
    """Count what is new since the champion's data set.

    Args:
        source: what the next run would ingest.
        champion: (version, lineage) of the champion (``lineage.champion_lineage``), or None.
        label_times: ``labelled_at`` of every current manual class label (the caller reads
            the scores database); those after the champion's data set was read count as new.
        mark_times: likewise of every current "not a class" mark: new ones count as new
            labels too (the next run learns them as out-of-distribution examples), and
            apart, in ``new_not_a_class``.
    """
    if champion is None or champion[1] is None:
        return Evidence(None, None, champion[0] if champion else None)
    version, lineage = champion
    hashes = hash_source(source, progress=progress)
    new_photos = int((~lineage.holds(set(hashes))).sum()) if hashes else 0
    new_labels = new_marks = None
    if label_times is not None:
        since = datetime.fromisoformat(lineage.created_at) if lineage.created_at else None
        new_marks = sum(1 for t in mark_times if since is None or _aware(t) > since)
        new_labels = sum(1 for t in label_times if since is None or _aware(t) > since) + new_marks
    return Evidence(new_photos, new_labels, version, new_marks)


def _aware(t: datetime) -> datetime:
    """SQLite hands back naive datetimes; the scores database stores UTC."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def check_retrain(
    source: str,
    policy: RetrainPolicy,
    model_name: str,
    tracking_uri: str,
    label_times: Sequence[datetime] | None = None,
    *,
    mark_times: Sequence[datetime] = (),
    progress: bool = True,
) -> RetrainDecision:
    """The whole check: find the champion's lineage in MLflow, count what is new, decide.
    With both thresholds off nothing is counted (every check retrains)."""
    import tempfile
    from pathlib import Path

    from clazzify.training.lineage import champion_lineage

    if policy.min_new_photos == 0 and policy.min_new_labels == 0:
        return should_retrain(Evidence(0, 0), policy)
    with tempfile.TemporaryDirectory() as tmp:
        champion = champion_lineage(model_name, Path(tmp), tracking_uri)
        evidence = gather_evidence(source, champion, label_times, mark_times=mark_times, progress=progress)
        return should_retrain(evidence, policy)


def retrain_check(
    source: str,
    policy: RetrainPolicy,
    model_name: str,
    tracking_uri: str,
    *,
    labels_from: str | None = None,
    read_manual_labels: Callable[[str], Iterable[Mapping]] | None = None,
    progress: bool = True,
) -> RetrainDecision:
    """The retrain check's setup and decision, shared by the pipeline's component and
    ``clazzify retrain``: :func:`check_retrain` with the ``labelled_at`` of the manual labels
    and of the "not a class" marks of the scores database at ``labels_from`` (read by
    ``read_manual_labels(url, not_a_class=...)``, which the entry point passes in, so
    training needs no database code).

    Raises:
        ConfigError: ``labels_from`` without a reader.
    """
    times, marks = None, []
    if labels_from:
        if read_manual_labels is None:
            raise ConfigError(f"labels_from={labels_from!r} needs a manual-label reader (clazzify.scoring)")
        times = [r["labelled_at"] for r in read_manual_labels(labels_from)]
        marks = [r["labelled_at"] for r in read_manual_labels(labels_from, not_a_class=True)]
    return check_retrain(source, policy, model_name, tracking_uri, times, mark_times=marks, progress=progress)
