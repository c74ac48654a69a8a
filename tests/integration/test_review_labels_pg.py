"""Two moderators labelling the same new photos at once on PostgreSQL: the last write wins
and the history chains (the second row's old label is the first row's new label). Two
replicas of the review app share one login throttle."""

from __future__ import annotations

import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import sqlalchemy as sa

from clazzify.review.throttle import LoginThrottle, ThrottleConfig, Throttled
from clazzify.scoring.schema import label_history, manual_labels
from clazzify.scoring.scores import ScoreRepository

pytestmark = pytest.mark.integration

PG_ADMIN = os.environ.get("CLAZZIFY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def pg_repo():
    name = f"clazzify_review_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    repo = ScoreRepository.open(sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False))
    try:
        yield repo
    finally:
        repo.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_concurrent_labels_of_a_new_photo_chain_in_the_history(pg_repo: ScoreRepository):
    photos = [f"p{i:02d}" for i in range(25)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def moderator(name: str, label: str) -> None:
        try:
            for photo in photos:
                barrier.wait(timeout=10)
                pg_repo.record_labels([(photo, label)], labelled_by=name, action="label")
        except BaseException as e:  # reported below; the other thread must not hang
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=moderator, args=a) for a in (("ann", "food"), ("bob", "menu"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    with pg_repo.engine.connect() as conn:
        history = conn.execute(
            sa.select(label_history.c.image_id, label_history.c.old_label, label_history.c.new_label)
            .order_by(label_history.c.id)
        ).all()
        current = dict(conn.execute(sa.select(manual_labels.c.image_id, manual_labels.c.label)).tuples().all())
    for photo in photos:
        rows = [(old, new) for image_id, old, new in history if image_id == photo]
        assert len(rows) == 2, (photo, rows)
        (old1, new1), (old2, new2) = rows
        assert old1 is None and old2 == new1 and current[photo] == new2, (photo, rows)


def test_two_replicas_share_one_login_throttle(pg_repo: ScoreRepository):
    """Two review apps on one database (two engines, two in-process locks): 16 guesses at once,
    half through each, and still only the free tries pass; the rest are told to wait."""
    config = ThrottleConfig(free_tries=3, base_delay_s=60.0, max_delay_s=60.0, lock_after=10)
    other = ScoreRepository.open(pg_repo.engine.url.render_as_string(hide_password=False), migrate=False)
    replicas = [LoginThrottle(pg_repo.engine, config), LoginThrottle(other.engine, config)]
    barrier = threading.Barrier(16)

    def guess(i: int) -> bool:
        barrier.wait(timeout=10)
        try:
            replicas[i % 2].attempt("ann", f"10.0.0.{i}")
        except Throttled:
            return False
        return True

    try:
        with ThreadPoolExecutor(16) as pool:
            allowed = list(pool.map(guess, range(16)))
    finally:
        other.close()
    assert sum(allowed) == 3
    assert replicas[0].state("user:ann") == (3, None)
