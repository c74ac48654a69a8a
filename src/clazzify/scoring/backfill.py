"""Backfill: score an existing collection of photos, resumably.

The collection is a folder, an ``s3://`` prefix, or a CSV/JSONL manifest with a
``uri`` column (and optional ``image_id``, ``restaurant_id``, ``source``). A photo's
id is its manifest ``image_id``, else its URI (``s3://bucket/key`` or the absolute
path), which is the id the worker gives an S3 upload event for the same object.

The run first asks the server which model version it serves, then walks the listing
in chunks, skips every photo that already has a score from that version, and commits
each scored batch. Stopping it at any point loses at most the batch in flight; the
next run picks up where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from clazzify.core import storage
from clazzify.core.errors import ConfigError, DataError
from clazzify.core.manifest import is_manifest, read_manifest_rows
from clazzify.scoring.database import is_transient
from clazzify.scoring.endpoint_client import EndpointClient, EndpointError
from clazzify.scoring.events import EventError, UploadEvent
from clazzify.scoring.scores import Batch, ScoreRepository, ScoreRow
from clazzify.scoring.worker import (
    BatchStats,
    Fetch,
    ScoringConfig,
    add_results,
    backoff_delay,
    score_unclaimed,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class BackfillConfig:
    """Settings of a backfill run.

    Attributes:
        batch_size: images per database commit (sent as ``scoring``'s requests).
        check_chunk: listed photos checked against the database at once.
        source_tag: stored as the ``source`` of photos the listing does not tag.
        max_attempts: tries of a batch that fails transiently before the run stops
            (it can be resumed).
        backoff_initial_s / backoff_max_s: delays between those tries (doubling).
    """

    batch_size: int = 32
    check_chunk: int = 2000
    source_tag: str = "backfill"
    max_attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.check_chunk < self.batch_size:
            raise ConfigError(
                f"need 1 <= batch_size ({self.batch_size}) <= check_chunk ({self.check_chunk})"
            )
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass
class BackfillReport:
    """What a backfill run did."""

    source: str
    model_name: str
    model_version: str
    listed: int = 0
    skipped: int = 0
    scored: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    #: Photos of this run the model flagged as none of its classes.
    unknown: int = 0
    #: Photos of this run that got an out-of-distribution verdict at all (0: an older model).
    judged: int = 0

    def count(self, scored: list[ScoreRow]) -> None:
        """Add committed scores to the counts."""
        self.scored += len(scored)
        self.unknown += sum(s.unknown is True for s in scored)
        self.judged += sum(s.unknown is not None for s in scored)

    def summary(self) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        failures = ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none"
        if self.judged:
            unknown = f"; unknown (none of the classes): {self.unknown} of {self.judged}"
        elif self.scored:
            unknown = "; no unknown verdicts (the model has no out-of-distribution score)"
        else:
            unknown = ""
        return (
            f"{self.source}: listed {self.listed}, already scored {self.skipped}, "
            f"scored {self.scored}, failed {self.failed} ({failures}) with "
            f"{self.model_name} v{self.model_version} in {self.seconds:.1f}s ({rate:.1f} images/s)"
            f"{unknown}"
        )


def _uri_of(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def list_collection(source: str, source_tag: str = "backfill") -> Iterator[UploadEvent]:
    """Yield an event per photo of ``source`` (folder, ``s3://`` prefix or manifest).

    Folders and prefixes yield files with an image suffix only; a manifest yields
    every row, relative URIs resolved against the manifest's folder.

    Raises:
        DataError: a manifest row is invalid (names the line).
        StorageError: the source cannot be listed.
    """
    if is_manifest(source):
        for row in read_manifest_rows(source, ("uri",)):
            uri = _uri_of(row.get("uri"))
            try:
                yield UploadEvent(
                    image_id=row.get("image_id") or uri,
                    uri=uri,
                    restaurant_id=row.get("restaurant_id") or None,
                    source=row.get("source") or source_tag,
                )
            except EventError as e:
                raise DataError(f"{source} line {row.line}: {e}") from e
        return
    for uri in storage.list_files(source):
        if uri.lower().endswith(IMAGE_SUFFIXES):
            uri = _uri_of(uri)
            yield UploadEvent(image_id=uri, uri=uri, source=source_tag)


def _chunked(items: Iterable[UploadEvent], size: int) -> Iterator[list[UploadEvent]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def score_collection(
    source: str,
    client: EndpointClient,
    repo: ScoreRepository,
    cfg: BackfillConfig = BackfillConfig(),
    *,
    fetch: Fetch | None = None,
    scoring: ScoringConfig | None = None,
    progress: bool = True,
) -> BackfillReport:
    """Score every photo of ``source`` that the served model version has not scored yet.

    Raises:
        EndpointError: the server stayed unavailable for ``max_attempts`` tries of a
            batch (what was committed so far stays; run again to resume).
        sqlalchemy.exc.OperationalError: the database stayed unavailable likewise.
    """
    from tqdm.auto import tqdm

    scoring = scoring or ScoringConfig()
    probe = client.probe()
    model_name = probe.model_name or scoring.default_model_name
    report = BackfillReport(source, model_name, probe.model_version)
    log.info("backfill of %s with %s version %s", source, model_name, probe.model_version)
    started = time.perf_counter()
    bar = tqdm(desc="scoring", unit="img", disable=not progress)
    try:
        for chunk in _chunked(list_collection(source, cfg.source_tag), cfg.check_chunk):
            report.listed += len(chunk)
            done = repo.scored_ids(model_name, probe.model_version, [e.image_id for e in chunk])
            todo = [
                e for e in dict((e.image_id, e) for e in chunk).values() if e.image_id not in done
            ]
            report.skipped += len(chunk) - len(todo)
            for batch in _chunked(todo, cfg.batch_size):
                _score_batch(batch, client, repo, cfg, scoring, fetch, report)
                bar.update(len(batch))
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    return report


def _score_batch(
    events: list[UploadEvent],
    client: EndpointClient,
    repo: ScoreRepository,
    cfg: BackfillConfig,
    scoring: ScoringConfig,
    fetch: Fetch | None,
    report: BackfillReport,
) -> None:
    import sqlalchemy.exc

    for attempt in range(cfg.max_attempts):
        results = score_unclaimed(events, client, repo, fetch, scoring, BatchStats())
        retry = next((r.failure for r in results if r.failure and r.failure.retry), None)
        if retry is None:
            batch = add_results(Batch(), results)
            try:
                repo.save(batch)
            except sqlalchemy.exc.SQLAlchemyError as e:
                if not is_transient(e) or attempt == cfg.max_attempts - 1:
                    raise
                retry_detail = f"database: {e.__class__.__name__}"
            else:
                report.count(batch.scores)
                report.failed += len(batch.dead_letters)
                for d in batch.dead_letters:
                    report.failures[d.reason] = report.failures.get(d.reason, 0) + 1
                return
        else:
            retry_detail = f"{retry.reason}: {retry.detail}"
            if attempt == cfg.max_attempts - 1:
                raise EndpointError(
                    "transient",
                    f"gave up after {cfg.max_attempts} tries: {retry_detail}. Scores committed "
                    "so far are kept; run the same command again to resume",
                )
        delay = backoff_delay(attempt, cfg.backoff_initial_s, cfg.backoff_max_s)
        log.warning(
            "batch failed (%s); retry %d/%d in %.1fs",
            retry_detail[:200],
            attempt + 1,
            cfg.max_attempts - 1,
            delay,
        )
        time.sleep(delay)
