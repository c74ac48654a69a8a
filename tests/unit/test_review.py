"""The review app's logic without a browser: labels and their history, queues, users, thumbnails,
sessions, login throttling, the hash gate and the body cap."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from starlette.exceptions import HTTPException

from clazzify.core.errors import ConfigError, ImageError
from clazzify.review import queues, users
from clazzify.review.middleware import BodyLimit, SecurityHeaders
from clazzify.review.throttle import HashBusy, HashGate, LoginThrottle, ThrottleConfig, Throttled, address_key
from clazzify.review.thumbs import ThumbnailCache, make_thumbnail
from clazzify.scoring.schema import label_history, manual_labels
from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow

CLASSES = ("ambiance", "food", "human", "menu")


def _score(image_id: str, version: str, label: str, p: float) -> ScoreRow:
    rest = (1.0 - p) / 3
    return ScoreRow(image_id, "clazzify", version, {c: (p if c == label else rest) for c in CLASSES},
                    f"/photos/{image_id}.jpg")


@pytest.fixture
def filled(repo: ScoreRepository) -> ScoreRepository:
    """20 photos; version 3 predicts food/human/menu/ambiance in turn with rising probability."""
    rows = [ImageRow(f"p{i:02d}", f"/photos/p{i:02d}.jpg", f"r{i % 2}", "upload" if i % 4 else "crawler")
            for i in range(20)]
    v2 = [_score(r.image_id, "2", CLASSES[(i + (i % 3 == 0)) % 4], 0.9) for i, r in enumerate(rows)]
    v3 = [_score(r.image_id, "3", CLASSES[i % 4], 0.3 + 0.03 * i) for i, r in enumerate(rows)]
    repo.save(Batch(images=rows, scores=v2))
    repo.save(Batch(scores=v3))
    return repo


def _history(repo: ScoreRepository) -> list[tuple]:
    with repo.engine.connect() as conn:
        return conn.execute(
            sa.select(label_history.c.image_id, label_history.c.old_label, label_history.c.new_label,
                      label_history.c.action, label_history.c.labelled_by).order_by(label_history.c.id)
        ).all()


def _current(repo: ScoreRepository) -> dict[str, str]:
    with repo.engine.connect() as conn:
        return dict(conn.execute(sa.select(manual_labels.c.image_id, manual_labels.c.label)).tuples().all())


def test_last_write_wins_and_both_decisions_stay_in_the_history(repo: ScoreRepository):
    repo.record_labels([("a", "food")], labelled_by="ann", action="label")
    repo.record_labels([("a", "menu")], labelled_by="bob", action="label")
    assert _current(repo) == {"a": "menu"}
    assert _history(repo) == [("a", None, "food", "label", "ann"), ("a", "food", "menu", "label", "bob")]


def test_undo_reverts_the_users_last_decision_then_the_one_before(repo: ScoreRepository):
    repo.record_labels([("a", "food")], labelled_by="ann", action="label")
    repo.record_labels([("b", "menu"), ("c", "human")], labelled_by="ann", action="bulk_accept")
    changes, skipped = repo.undo_last("ann")
    assert sorted((c.image_id, c.new_label) for c in changes) == [("b", None), ("c", None)] and skipped == []
    assert _current(repo) == {"a": "food"}
    changes, _ = repo.undo_last("ann")
    assert [(c.image_id, c.old_label, c.new_label) for c in changes] == [("a", "food", None)]
    assert _current(repo) == {}
    assert repo.undo_last("ann") == ([], [])
    assert [h[3] for h in _history(repo)] == ["label", "bulk_accept", "bulk_accept", "undo", "undo", "undo"]


def test_undo_keeps_a_label_someone_else_wrote_since(repo: ScoreRepository):
    repo.record_labels([("a", "food")], labelled_by="ann", action="label")
    repo.record_labels([("a", "ambiance")], labelled_by="ann", action="label")
    repo.record_labels([("a", "menu")], labelled_by="bob", action="label")
    changes, skipped = repo.undo_last("ann")
    assert changes == [] and skipped == ["a"]
    assert _current(repo) == {"a": "menu"}
    assert _history(repo)[-1] == ("a", "menu", "menu", "undo_skipped", "ann")
    # The skipped decision counts as handled: the next undo reaches the one before it, which
    # bob's label also overrode.
    assert repo.undo_last("ann") == ([], ["a"])


def test_relabel_imports_leave_a_trace_too(repo: ScoreRepository):
    repo.add_manual_labels([("a", "food")], labelled_by="relabel-import")
    assert _history(repo) == [("a", None, "food", "import", "relabel-import")]


def _scope(other: str | None = "2", threshold: float = 0.6) -> queues.Scope:
    return queues.Scope("clazzify", "3", other, threshold)


def test_keyset_pages_cover_a_queue_once_in_order(filled: ScoreRepository):
    seen = []
    after = None
    with filled.engine.connect() as conn:
        while True:
            cards, after = queues.page(conn, _scope(), queues.Queue("unreviewed"), after=after, limit=3)
            seen += cards
            if after is None:
                break
    assert [c.image_id for c in seen] == [f"p{i:02d}" for i in range(20)]
    assert [c.probability for c in seen] == sorted(c.probability for c in seen)


def test_queues_select_what_they_say(filled: ScoreRepository):
    filled.record_labels([("p00", "food")], labelled_by="ann", action="label")
    with filled.engine.connect() as conn:
        def ids(queue: queues.Queue) -> list[str]:
            return [c.image_id for c in queues.page(conn, _scope(), queue, limit=100)[0]]

        low = ids(queues.Queue("low"))
        assert low == [f"p{i:02d}" for i in range(1, 10)]  # p = 0.3 + 0.03 i < 0.6, p00 reviewed
        assert ids(queues.Queue("low", pending=False))[0] == "p00"
        assert ids(queues.Queue("class", label="human")) == ["p02", "p06", "p10", "p14", "p18"]
        assert ids(queues.Queue("class", label="food", restaurant="r1")) == ["p01", "p05", "p09", "p13", "p17"]
        assert ids(queues.Queue("unreviewed", source="crawler")) == ["p04", "p08", "p12", "p16"]
        disagree = queues.page(conn, _scope(), queues.Queue("disagree"), limit=100)[0]
        assert [c.image_id for c in disagree] == ["p03", "p06", "p09", "p12", "p15", "p18"]
        assert all(c.other_label != c.label for c in disagree)
        counts = queues.counts(conn, _scope())
        assert counts.low == (9, 10)
        assert counts.unreviewed == (19, 19)
        assert counts.by_class["ambiance"] == (4, 5) and counts.by_class["food"] == (5, 5)
        assert counts.disagree == (6, 7)
        assert queues.counts(conn, _scope(), restaurant="r1").by_class["food"] == (5, 5)
        assert queues.versions(conn, "clazzify") == ["3", "2"]
        assert queues.class_names(conn, "clazzify") == list(CLASSES)


def test_stats_count_todays_decisions_and_the_confusion(filled: ScoreRepository):
    filled.record_labels([("p00", "food"), ("p01", "food")], labelled_by="ann", action="label")
    filled.record_labels([("p02", "menu")], labelled_by="ann", action="label")
    filled.undo_last("ann")
    with filled.engine.connect() as conn:
        stats = queues.stats(conn, _scope(), CLASSES)
        rows = list(queues.export_rows(conn, _scope()))
    assert stats.reviewed_today == {"food": 2}
    assert stats.confusion == {("ambiance", "food"): 1, ("food", "food"): 1}
    assert stats.agreement == (1, 2)
    assert [(r["image_id"], r["label"], r["model_label"]) for r in rows] == [
        ("p00", "food", "ambiance"), ("p01", "food", "food")]


@pytest.mark.parametrize("text", ["", "x:y", "nan:a", "0.5"])
def test_a_bad_cursor_is_refused_by_name(text: str):
    with pytest.raises(ConfigError, match="bad page cursor"):
        queues.Cursor.decode(text)


def test_a_cursor_round_trips_ids_with_colons():
    cursor = queues.Cursor(0.123456789, "s3://b/k:1.jpg")
    assert queues.Cursor.decode(cursor.encode()) == cursor


def test_queue_arguments_are_checked():
    with pytest.raises(ConfigError, match="unknown queue 'nope'"):
        queues.Queue("nope")
    with pytest.raises(ConfigError, match="needs a label"):
        queues.Queue("class")


def test_users_hash_passwords_and_check_them(repo: ScoreRepository):
    users.add_user(repo.engine, "ann", "correct horse", "admin")
    with repo.engine.connect() as conn:
        stored = conn.scalar(sa.text("SELECT password_hash FROM review_users"))
    assert stored.startswith("$argon2") and "correct horse" not in stored
    assert users.authenticate(repo.engine, "ann", "correct horse") == users.User("ann", "admin")
    assert users.authenticate(repo.engine, "ann", "wrong horse") is None
    assert users.authenticate(repo.engine, "nobody", "correct horse") is None
    users.remove_user(repo.engine, "ann")
    assert users.find_user(repo.engine, "ann") is None
    with pytest.raises(ConfigError, match="no review user 'ann'"):
        users.remove_user(repo.engine, "ann")


@pytest.mark.parametrize(("name", "password", "role", "match"), [
    ("ann", "short", "moderator", "too short"),
    ("a b", "long enough", "moderator", "bad user name"),
    ("ann", "long enough", "root", "unknown role 'root'"),
])
def test_bad_accounts_are_refused_by_name(repo: ScoreRepository, name, password, role, match):
    with pytest.raises(ConfigError, match=match):
        users.add_user(repo.engine, name, password, role)


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def test_thumbnails_keep_the_aspect_and_are_cached(tmp_path: Path):
    photo = tmp_path / "big.jpg"
    photo.write_bytes(_jpeg(800, 400))
    cache = ThumbnailCache(tmp_path / "cache", size=128)
    first = cache.get(str(photo))
    assert Image.open(io.BytesIO(first)).size == (128, 64)
    assert Image.open(io.BytesIO(cache.get(f"file://{photo}"))).size == (128, 64)  # storage URIs
    photo.unlink()  # a second read comes from the cache, not the original
    assert cache.get(str(photo)) == first


def test_a_broken_photo_gives_a_clear_error():
    with pytest.raises(ImageError):
        make_thumbnail(b"not an image", 64)


# -- sessions, login throttling, the hash gate, the body cap -----------------------------------


def test_a_new_password_or_logging_out_everywhere_moves_the_session_generation(repo: ScoreRepository):
    users.add_user(repo.engine, "ann", "correct horse", "admin")
    first = users.find_user(repo.engine, "ann").generation
    assert users.end_sessions(repo.engine, "ann") == first + 1
    users.set_password(repo.engine, "ann", "battery staple")
    assert users.authenticate(repo.engine, "ann", "battery staple").generation == first + 2
    users.add_user(repo.engine, "ann", "another horse", "moderator")  # replacing ends sessions too
    assert users.find_user(repo.engine, "ann") == users.User("ann", "moderator")
    assert users.find_user(repo.engine, "ann").generation == first + 3
    # A removed account made again does not take up the old generation where it left off.
    users.remove_user(repo.engine, "ann")
    users.add_user(repo.engine, "ann", "correct horse", "admin")
    assert users.find_user(repo.engine, "ann").generation != first + 3
    with pytest.raises(ConfigError, match="no review user 'bob'"):
        users.end_sessions(repo.engine, "bob")
    with pytest.raises(ConfigError, match="too short"):
        users.set_password(repo.engine, "ann", "short")


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _try(throttle: LoginThrottle, user: str, host: str) -> float:
    """0 when the try is allowed (and counted), else the wait the throttle asks for."""
    try:
        throttle.attempt(user, host)
    except Throttled as e:
        return e.retry_after
    return 0.0


def test_wrong_passwords_slow_down_then_lock_the_account_and_the_address(repo: ScoreRepository):
    config = ThrottleConfig(free_tries=3, base_delay_s=1.0, max_delay_s=8.0, lock_after=10, lockout_s=900.0)
    clock = _Clock()
    throttle = LoginThrottle(repo.engine, config, clock)
    waits = []
    for _ in range(10):  # a patient guesser: waits as long as it is told, then guesses wrong
        wait = _try(throttle, "ann", "10.0.0.1")
        if wait:
            waits.append(wait)
            clock.now += wait
            assert _try(throttle, "ann", "10.0.0.1") == 0.0
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # 3 free, then doubling up to the cap
    # The 10th wrong password locked the account: even the right one is refused now, from here
    # and from anywhere else.
    assert _try(throttle, "ann", "10.0.0.1") == pytest.approx(900.0)
    assert _try(throttle, "ann", "10.9.9.9") == pytest.approx(900.0)
    # Ten more tries at the locked account from the same address lock the address too.
    for _ in range(9):
        assert _try(throttle, "ann", "10.0.0.1") > 0
    assert throttle.state("addr:10.0.0.1")[1] is not None
    assert _try(throttle, "bob", "10.0.0.1") == pytest.approx(900.0)  # another account, same address
    assert _try(throttle, "bob", "10.0.0.2") == 0.0  # another account elsewhere is not slowed
    clock.now += 900.0
    assert _try(throttle, "ann", "10.0.0.1") == 0.0  # the lock served: the right password checks
    throttle.succeeded("ann", "10.0.0.1")
    assert throttle.state("user:ann") is None


def test_a_success_clears_the_account_and_counts_age_away(repo: ScoreRepository):
    config = ThrottleConfig(free_tries=2, base_delay_s=5.0, max_delay_s=5.0, lock_after=4,
                            forget_after_s=60.0)
    clock = _Clock()
    throttle = LoginThrottle(repo.engine, config, clock)
    assert _try(throttle, "ann", "::1") == 0.0
    assert _try(throttle, "ann", "::1") == 0.0
    assert _try(throttle, "ann", "::1") == 5.0
    throttle.succeeded("ann", "::1")  # (a right password after the wait)
    assert _try(throttle, "ann", "::1") == 0.0
    assert _try(throttle, "ann", "::1") == 0.0
    clock.now += 61.0
    assert _try(throttle, "ann", "::1") == 0.0  # the two old failures were forgotten


def test_parallel_guesses_see_each_others_tries(repo: ScoreRepository):
    throttle = LoginThrottle(repo.engine, ThrottleConfig(free_tries=3, lock_after=10), _Clock())
    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(lambda _: _try(throttle, "ann", "10.0.0.1"), range(16)))
    assert sum(w == 0.0 for w in waits) == 3  # only the free tries pass; the rest wait


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "addr:203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "addr:2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "addr:2001:db8:1:2::/64"),  # the same machine's /64
    ("::ffff:203.0.113.7", "addr:203.0.113.7"),
    (None, "addr:unknown"),
])
def test_addresses_are_counted_by_what_one_client_holds(host, key):
    assert address_key(host) == key


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"free_tries": 10, "lock_after": 10}, "free tries"),
    ({"base_delay_s": 5.0, "max_delay_s": 1.0}, "delays"),
    ({"lockout_s": 0.0}, "lockout"),
    ({"address_factor": 0}, "address factor"),
])
def test_bad_throttle_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ThrottleConfig(**kwargs)


def test_the_hash_gate_runs_at_most_its_limit_and_refuses_the_rest():
    gate = HashGate(limit=2, wait_s=0.15, max_waiting=64)
    outcomes: list[str] = []

    async def login() -> None:
        try:
            async with gate.slot():
                await asyncio.sleep(0.05)
            outcomes.append("checked")
        except HashBusy:
            outcomes.append("busy")

    async def burst() -> None:
        await asyncio.gather(*(login() for _ in range(20)))

    asyncio.run(burst())
    assert gate.peak == 2 and gate.running == 0
    assert 4 <= outcomes.count("checked") < 20 and outcomes.count("busy") == 20 - outcomes.count("checked")


def _asgi_post(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, int]:
    """POST ``chunks`` to a pure ASGI app; (status, how many chunks the app pulled)."""
    pulled = 0
    status = 0

    async def receive() -> dict:
        nonlocal pulled
        pulled += 1
        body = chunks[pulled - 1] if pulled <= len(chunks) else b""
        return {"type": "http.request", "body": body, "more_body": pulled < len(chunks)}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    asyncio.run(app(scope, receive, send))
    return status, pulled


def test_the_body_cap_refuses_a_big_body_before_reading_it():
    async def reader(scope, receive, send) -> None:  # an app that reads the whole body
        try:
            while (await receive()).get("more_body"):
                pass
        except HTTPException as e:
            await send({"type": "http.response.start", "status": e.status_code, "headers": []})
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})

    app = BodyLimit(reader, max_bytes=1024)
    chunk = b"x" * 512
    assert _asgi_post(app, [(b"content-length", b"1024")], [chunk, chunk]) == (200, 2)
    assert _asgi_post(app, [(b"content-length", b"10485760")], [chunk] * 100) == (413, 0)  # never read
    assert _asgi_post(app, [(b"content-length", b"1e9")], [chunk]) == (400, 0)
    assert _asgi_post(app, [(b"transfer-encoding", b"chunked")], [chunk] * 100) == (413, 3)  # stops at the cap


@pytest.mark.parametrize(("scheme", "always_tls", "tls"), [
    ("http", False, False), ("https", False, True), ("http", True, True)])
def test_tls_requests_get_hsts_and_secure_cookies(scheme: str, always_tls: bool, tls: bool):
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"set-cookie", b"s=1; path=/; httponly; samesite=lax")]})

    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "scheme": scheme, "method": "GET", "path": "/", "headers": []}
    asyncio.run(SecurityHeaders(app, always_tls=always_tls)(scope, None, send))
    headers = dict(sent[0]["headers"])
    assert (b"; secure" in headers[b"set-cookie"]) is tls
    assert (headers.get(b"strict-transport-security") == b"max-age=31536000") is tls
    assert headers[b"x-content-type-options"] == b"nosniff"


def test_flagged_photos_have_their_own_queue_and_leave_the_class_queues(filled: ScoreRepository):
    # v3 rescored p01 (food) and p02 (human) as none of the classes.
    flagged = [ScoreRow(i, "clazzify", "3", {c: 0.25 for c in CLASSES} | {c_: 0.4}, f"/photos/{i}.jpg",
                        unknown=True, in_distribution_score=-1.0)
               for i, c_ in (("p01", "food"), ("p02", "human"))]
    filled.save(Batch(scores=flagged))
    filled.record_labels([("p01", "not_a_class")], labelled_by="ann", action="label")
    with filled.engine.connect() as conn:
        def ids(queue: queues.Queue) -> list[str]:
            return [c.image_id for c in queues.page(conn, _scope(), queue, limit=100)[0]]

        assert ids(queues.Queue("unknown")) == ["p02"]
        assert ids(queues.Queue("unknown", pending=False)) == ["p01", "p02"]
        assert "p02" not in ids(queues.Queue("class", label="human", pending=False))
        assert "p01" not in ids(queues.Queue("class", label="food", pending=False))
        assert queues.page(conn, _scope(), queues.Queue("unknown"), limit=5)[0][0].unknown is True
        counts = queues.counts(conn, _scope())
        assert counts.unknown == (1, 2)
        assert counts.by_class["food"] == (4, 4) and counts.by_class["human"] == (4, 4)
        assert counts.unreviewed == (19, 19)


def test_the_not_a_class_mark_can_never_be_a_configured_class():
    from clazzify.review.app import ReviewConfig

    with pytest.raises(ConfigError, match="not_a_class"):
        ReviewConfig(classes=("food", "not_a_class"))
