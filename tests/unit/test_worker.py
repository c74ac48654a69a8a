"""process_batch: outcomes per message, one commit, retries leave nothing behind."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlalchemy.exc
from _scoring import FakeScorer, write_images

from clazzify.core.errors import StorageError
from clazzify.core.storage import PermanentStorageError
from clazzify.scoring.scores import Batch, ScoreRepository
from clazzify.scoring.sources import SourceNotAllowed, SourcePolicy
from clazzify.scoring.worker import (
    Message,
    ScoringConfig,
    backoff_delay,
    classify_fetch_error,
    process_batch,
)

pytestmark = pytest.mark.unit


def plain(image_id: str, uri: str | Path, **extra: object) -> Message:
    return Message(json.dumps({"image_id": image_id, "uri": str(uri), **extra}).encode())


def rows(repo: ScoreRepository, sql: str) -> list[tuple]:
    with repo.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql))]


def test_a_clean_batch_is_scored_and_committed(tmp_path: Path, repo: ScoreRepository) -> None:
    paths = write_images(tmp_path / "img", 5)
    messages = [plain(f"p{i}", p, restaurant_id="r1") for i, p in enumerate(paths)]
    scorer = FakeScorer(version="4")
    outcomes = process_batch(messages, scorer, repo)
    assert [o.status for o in outcomes] == ["scored"] * 5
    assert scorer.calls == [5]  # one request for the whole batch
    assert rows(repo, "SELECT count(*), min(model_version), max(writes) FROM scores") == [
        (5, "4", 1)
    ]
    assert rows(repo, "SELECT count(*) FROM images WHERE restaurant_id = 'r1'") == [(5,)]


def test_poison_messages_are_dead_and_do_not_hold_back_the_rest(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    [good, other] = write_images(tmp_path / "img", 2)
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image")
    messages = [
        plain("good", good),
        Message(b"{not json"),
        plain("gone", tmp_path / "missing.jpg"),
        plain("text", text),
        plain("other", other),
    ]
    scorer = FakeScorer()
    outcomes = process_batch(messages, scorer, repo)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("scored", ""),
        ("dead", "bad_json"),
        ("dead", "missing_object"),
        ("dead", "invalid_image"),
        ("scored", ""),
    ]
    assert rows(repo, "SELECT image_id FROM scores ORDER BY image_id") == [("good",), ("other",)]
    assert sorted(rows(repo, "SELECT reason, image_id FROM dead_letters"), key=str) == sorted(
        [("bad_json", None), ("missing_object", "gone"), ("invalid_image", "text")], key=str
    )
    # the server rejected the 3-image request; splitting found the bad one
    assert scorer.calls[0] == 3 and sum(scorer.calls) > 3


def test_endpoint_down_means_retry_and_nothing_written(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    paths = write_images(tmp_path / "img", 3)
    messages = [plain(f"p{i}", p) for i, p in enumerate(paths)] + [Message(b"junk")]
    scorer = FakeScorer()
    scorer.down = True
    outcomes = process_batch(messages, scorer, repo)
    assert [o.status for o in outcomes] == ["retry", "retry", "retry", "dead"]
    assert outcomes[0].reason == "endpoint_unavailable"
    assert rows(repo, "SELECT count(*) FROM scores") == [(0,)]
    scorer.down = False
    outcomes = process_batch(messages[:3], scorer, repo)
    assert [o.status for o in outcomes] == ["scored"] * 3


class _DownRepo:
    def save(self, batch: Batch) -> None:
        raise sqlalchemy.exc.OperationalError("INSERT", {}, Exception("connection refused"))

    def image_uris(self, image_ids):
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))


class _RejectingRepo:
    """Refuses any batch holding image 'bad' (as a constraint violation would)."""

    def __init__(self, inner: ScoreRepository) -> None:
        self.inner = inner
        self.image_uris = inner.image_uris

    def save(self, batch: Batch) -> None:
        if any(s.image_id == "bad" for s in batch.scores):
            raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("value too long"))
        self.inner.save(batch)


def test_database_down_means_retry(tmp_path: Path) -> None:
    [path] = write_images(tmp_path / "img", 1)
    outcomes = process_batch([plain("a", path), Message(b"junk")], FakeScorer(), _DownRepo())
    assert [(o.status, o.reason) for o in outcomes] == [
        ("retry", "db_unavailable"),
        ("retry", "db_unavailable"),
    ]


def test_a_row_the_database_refuses_is_isolated(tmp_path: Path, repo: ScoreRepository) -> None:
    paths = write_images(tmp_path / "img", 3)
    messages = [plain("ok1", paths[0]), plain("bad", paths[1]), plain("ok2", paths[2])]
    outcomes = process_batch(messages, FakeScorer(), _RejectingRepo(repo))
    assert [(o.status, o.reason) for o in outcomes] == [
        ("scored", ""),
        ("dead", "db_rejected"),
        ("scored", ""),
    ]
    assert rows(repo, "SELECT reason FROM dead_letters") == [("db_rejected",)]


class _RefusingEverythingRepo:
    """Refuses image 'bad' and every dead letter (as a full disk or a broken table would)."""

    def __init__(self, inner: ScoreRepository) -> None:
        self.inner = inner
        self.image_uris = inner.image_uris
        self.saves = 0

    def save(self, batch: Batch) -> None:
        self.saves += 1
        if batch.dead_letters or any(s.image_id == "bad" for s in batch.scores):
            raise sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("refused"))
        self.inner.save(batch)


def test_a_refused_row_whose_dead_letter_is_refused_too_is_retried(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    paths = write_images(tmp_path / "img", 2)
    store = _RefusingEverythingRepo(repo)
    outcomes = process_batch([plain("ok", paths[0]), plain("bad", paths[1])], FakeScorer(), store)
    assert [(o.status, o.reason) for o in outcomes] == [("scored", ""), ("retry", "db_unavailable")]
    assert store.saves == 4  # the batch, then "ok" alone, "bad" alone and its dead letter
    assert rows(repo, "SELECT image_id FROM scores") == [("ok",)]


def test_s3_notification_with_several_records(tmp_path: Path, repo: ScoreRepository) -> None:
    [path] = write_images(tmp_path / "bucket", 1)
    blobs = {"s3://uploads/ok.png": path.read_bytes()}

    def fetch(uri: str) -> bytes:
        if uri not in blobs:
            raise PermanentStorageError("missing_object", f"cannot read {uri}: NoSuchKey")
        return blobs[uri]

    record = {
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": "ok.png"}},
    }
    missing = {
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "uploads"}, "object": {"key": "gone.png"}},
    }
    body = json.dumps({"EventName": "s3:ObjectCreated:Put", "Records": [record, missing]}).encode()
    [outcome] = process_batch([Message(body)], FakeScorer(), repo, fetch=fetch)
    assert (outcome.status, outcome.reason, outcome.scored) == ("dead", "missing_object", 1)
    assert rows(repo, "SELECT image_id FROM scores") == [("s3://uploads/ok.png",)]


def test_an_s3_notification_for_a_deletion_is_skipped(repo: ScoreRepository) -> None:
    body = json.dumps({"Records": [{"eventName": "s3:ObjectRemoved:Delete"}]}).encode()
    [outcome] = process_batch([Message(body)], FakeScorer(), repo)
    assert outcome.status == "skipped" and outcome.acknowledge


def test_requests_respect_the_byte_limit(tmp_path: Path, repo: ScoreRepository) -> None:
    paths = write_images(tmp_path / "img", 6)
    size = max(p.stat().st_size for p in paths)
    scorer = FakeScorer()
    cfg = ScoringConfig(request_images=4, request_bytes=2 * size)
    process_batch([plain(f"p{i}", p) for i, p in enumerate(paths)], scorer, repo, cfg=cfg)
    assert scorer.calls == [2, 2, 2]


def test_oversized_objects_are_dead_without_a_request(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    [path] = write_images(tmp_path / "img", 1)
    scorer = FakeScorer()
    [outcome] = process_batch(
        [plain("a", path)], scorer, repo, cfg=ScoringConfig(max_image_bytes=10)
    )
    assert (outcome.status, outcome.reason) == ("dead", "too_large")
    assert scorer.calls == []


def test_fetch_errors_are_classified() -> None:
    assert not classify_fetch_error(FileNotFoundError(2, "No such file")).retry
    assert classify_fetch_error(ConnectionRefusedError(111, "refused")).retry
    assert classify_fetch_error(StorageError("cannot reach s3: timeout")).retry
    refused = classify_fetch_error(PermanentStorageError("access_denied", "AccessDenied"))
    assert (refused.retry, refused.reason) == (False, "access_denied")
    outside = classify_fetch_error(SourceNotAllowed("s3://mlflow/x is outside"))
    assert (outside.retry, outside.reason) == (False, "source_not_allowed")


def test_backoff_doubles_up_to_the_cap() -> None:
    assert [backoff_delay(a, 0.5, 5) for a in range(6)] == [0.5, 1, 2, 4, 5, 5]


class _PairScorer(FakeScorer):
    """Answers only when two requests are in flight together."""

    def __init__(self) -> None:
        super().__init__()
        self.barrier = threading.Barrier(2, timeout=5)

    def infer(self, images):
        self.barrier.wait()
        return super().infer(images)


def test_the_requests_of_a_batch_are_in_flight_together(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    paths = write_images(tmp_path / "img", 8)
    scorer = _PairScorer()
    cfg = ScoringConfig(request_images=4, request_concurrency=2)
    outcomes = process_batch(
        [plain(f"p{i}", p) for i, p in enumerate(paths)], scorer, repo, cfg=cfg
    )
    assert [o.status for o in outcomes] == ["scored"] * 8
    assert scorer.calls == [4, 4]


def test_sources_outside_the_allow_list_are_dead_before_any_read(
    tmp_path: Path, repo: ScoreRepository
) -> None:
    inside = write_images(tmp_path / "uploads", 1)[0]
    outside = write_images(tmp_path / "private", 1, prefix="secret")[0]
    link = tmp_path / "uploads" / "link.png"
    link.symlink_to(outside)  # a link inside the allowed folder that points out of it
    read: list[str] = []

    def fetch(uri: str) -> bytes:
        read.append(uri)
        return Path(uri).read_bytes()

    cfg = ScoringConfig(sources=SourcePolicy.parse([str(tmp_path / "uploads"), "s3://uploads"]))
    messages = [
        plain("in", inside),
        plain("out", outside),
        plain("link", link),
        plain("bucket", "s3://mlflow/models/m.png"),
        plain("http", "http://127.0.0.1:9/x.jpg"),
    ]
    outcomes = process_batch(messages, FakeScorer(), repo, fetch=fetch, cfg=cfg)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("scored", ""),
        ("dead", "source_not_allowed"),
        ("dead", "source_not_allowed"),
        ("dead", "source_not_allowed"),
        ("dead", "unsupported_scheme"),
    ]
    assert read == [str(inside)]


def test_an_event_never_moves_a_known_photo(tmp_path: Path, repo: ScoreRepository) -> None:
    first, second, third = write_images(tmp_path / "img", 3)
    [outcome] = process_batch([plain("p1", first)], FakeScorer(), repo)
    assert outcome.status == "scored"
    outcomes = process_batch(
        [plain("p1", second), plain("p1", first), plain("p2", third), plain("p2", second)],
        FakeScorer(),
        repo,
    )
    assert [(o.status, o.reason) for o in outcomes] == [
        ("dead", "id_conflict"),  # p1 already belongs to the first photo
        ("scored", ""),  # the same photo again: a rescore
        ("scored", ""),
        ("dead", "id_conflict"),  # p2 was taken earlier in the same batch
    ]
    assert rows(repo, "SELECT image_id, uri FROM images ORDER BY image_id") == [
        ("p1", str(first)),
        ("p2", str(third)),
    ]
    assert rows(repo, "SELECT image_id, writes FROM scores ORDER BY image_id") == [
        ("p1", 2),
        ("p2", 1),
    ]


def test_the_default_fetch_is_bounded(tmp_path: Path, repo: ScoreRepository) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(2 * 1024**3)  # 2 GB, sparse: no disk, and never read
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcomes = process_batch([plain("big", big), plain("fifo", fifo)], FakeScorer(), repo)
    assert [(o.status, o.reason) for o in outcomes] == [
        ("dead", "too_large"),
        ("dead", "not_a_file"),
    ]
