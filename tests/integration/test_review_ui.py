"""The review page in a real browser (Debian's Chromium driven by Playwright), on PostgreSQL
and SQLite, against `clazzify review-ui` running as a child process; then the rows it wrote.
Then the page as an attacker meets it: login throttling and lockout measured in the browser,
sessions revoked from another browser and from the command line, bodies over the cap, a
burst of parallel guesses against the hash gate, TLS cookies and HSTS.

Needs /usr/bin/chromium (apt `chromium`, installed by .ci/run) and PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from db_support import query
from playwright.sync_api import Browser, expect
from review_support import (
    clazzify,
    peak_rss_mib,
    review_process,
    review_server,
    seed_review_db,
)

from clazzify.review.users import add_user
from clazzify.scoring.database import create_db_engine
from clazzify.scoring.scores import ScoreRepository

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a server and a browser per database

PG_ADMIN = os.environ.get("CLAZZIFY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORDS = {"alice": "alice-admin-pw", "bob": "bob-moderator-pw"}


@contextmanager
def _database(kind: str, tmp: Path) -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, or an SQLite file; yields its URL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp}/scores.db"
        return
    name = f"clazzify_review_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def site(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a seeded review server with users alice (admin), bob."""
    tmp = tmp_path_factory.mktemp(f"review-{request.param}")
    with _database(request.param, tmp) as db_url:
        seed_review_db(db_url, tmp / "photos", per_class=8)
        done = clazzify("review-ui", "--db", db_url, "users", "add", "alice", "--role", "admin",
                        "--password-stdin", stdin=PASSWORDS["alice"] + "\n")
        assert done.returncode == 0, done.stderr
        engine = create_db_engine(db_url)
        add_user(engine, "bob", PASSWORDS["bob"], "moderator")
        engine.dispose()
        with review_server(db_url, tmp / "thumbs") as base:
            yield base, db_url


def test_a_moderator_reviews_a_queue_with_the_keyboard(site, browser: Browser):
    base, db_url = site
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # No session: the queue sends the browser to the login page, which sends it back.
    page.goto(f"{base}/queue/class/human")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fqueue%2Fclass%2Fhuman$"))
    page.fill("input[name=username]", "bob")
    page.fill("input[name=password]", PASSWORDS["bob"])
    page.click("main.login button[type=submit]")
    expect(page).to_have_url(f"{base}/queue/class/human")

    cards = page.locator("#grid .card")
    expect(cards.first).to_be_visible()
    n = cards.count()
    assert n >= 3
    assert page.locator("#grid .card .pred b").all_inner_texts() == ["human"] * n
    ids = [cards.nth(i).get_attribute("data-id") for i in range(n)]
    first, second, third = (page.locator(f'.card[data-id="{i}"]') for i in ids[:3])
    expect(page.locator("#counts .queues a.on .n")).to_have_text(str(n))
    # the thumbnail arrives (it loads after the card shows; under load that takes a while)
    page.wait_for_function("document.querySelector('#grid .card img').naturalWidth > 0", timeout=15_000)

    page.keyboard.press("2")  # digit: the 2nd class, food
    expect(first.locator(".badge")).to_have_text("✓ food")
    page.keyboard.press("m")  # initial: menu
    expect(second.locator(".badge")).to_have_text("✓ menu")
    page.keyboard.press("Enter")  # accept the model's label
    expect(third.locator(".badge")).to_have_text("✓ human")
    page.keyboard.press("u")  # undo the accept
    expect(third.locator(".pending")).to_be_visible()
    expect(third).to_have_class(re.compile(r"\bfocused\b"))
    page.keyboard.press("ArrowLeft")
    expect(second).to_have_class(re.compile(r"\bfocused\b"))

    page.keyboard.press("Shift+A")  # bulk-accept the page: only the photos still pending
    expect(page.locator("#grid .card .pending")).to_have_count(0)
    expect(page.locator("#toast")).to_contain_text(f"for {n - 2} photos (2 already labelled")
    expect(first.locator(".badge")).to_have_text("✓ food")

    page.click("#logout")
    expect(page).to_have_url(f"{base}/login")
    page.goto(f"{base}/queue/low")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    assert errors == []
    page.close()

    # The rows: the current labels, and every decision in the history.
    labels = dict(query(db_url, "SELECT image_id, label FROM manual_labels WHERE labelled_by = 'bob'"))
    assert labels == {ids[0]: "food", ids[1]: "menu", **{i: "human" for i in ids[2:]}}
    history = query(db_url, "SELECT image_id, old_label, new_label, action FROM label_history "
                            "WHERE labelled_by = 'bob' ORDER BY id")
    assert history[:4] == [(ids[0], None, "food", "label"), (ids[1], None, "menu", "label"),
                           (ids[2], None, "human", "accept"), (ids[2], "human", None, "undo")]
    assert sorted(history[4:]) == sorted((i, None, "human", "bulk_accept") for i in ids[2:])


def _login(client: httpx.Client, user: str) -> str:
    """Log ``user`` in on ``client``; returns the session's CSRF token."""
    page = client.get("/login")
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    answer = client.post("/login", data={"csrf_token": token, "username": user, "password": PASSWORDS[user]})
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    home = client.get("/queue/low")
    assert home.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', home.text).group(1)


def test_the_app_refuses_what_it_should(site):
    base, db_url = site
    image_id = query(db_url, "SELECT image_id FROM images ORDER BY image_id LIMIT 1")[0][0]
    with httpx.Client(base_url=base, follow_redirects=False) as anon:
        answer = anon.get("/queue/low")
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next=")
        assert anon.get("/export.csv").status_code == 303
        assert anon.get(f"/thumb?id={image_id}").status_code == 303
        assert anon.post("/login", data={"username": "bob", "password": PASSWORDS["bob"]}).status_code == 403

    with httpx.Client(base_url=base, follow_redirects=False) as bob:
        token = _login(bob, "bob")
        form = {"image_id": image_id, "label": "food"}
        assert bob.post("/label", data=form).status_code == 403
        assert bob.post("/label", data={**form, "csrf_token": "forged"}).status_code == 403
        assert bob.post("/undo").status_code == 403
        assert bob.post("/label", data={**form, "label": "cat"}, headers={"X-CSRF-Token": token}).status_code == 400
        assert bob.post("/label", data=form, headers={"X-CSRF-Token": token}).status_code == 200

        # Thumbnails only for photos the database holds: never a path from the request.
        thumb = bob.get("/thumb", params={"id": image_id})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        photo = query(db_url, f"SELECT uri FROM images WHERE image_id = '{image_id}'")[0][0]
        for forged in ("/etc/passwd", photo, "file:///etc/passwd", "../" * 8 + "etc/passwd", "nope"):
            assert bob.get("/thumb", params={"id": forged}).status_code == 404, forged

        assert bob.get("/export.csv").status_code == 403  # moderators label; admins export
        stats = bob.get("/stats")
        assert stats.status_code == 200 and "Model (rows) vs moderator (columns)" in stats.text
        assert "Export CSV" not in bob.get("/queue/low").text

    with httpx.Client(base_url=base, follow_redirects=False) as alice:
        _login(alice, "alice")
        export = alice.get("/export.csv")
        assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
        lines = export.text.splitlines()
        assert lines[0].startswith("image_id,uri,restaurant_id,source,label,labelled_by")
        labelled = query(db_url, "SELECT count(*) FROM manual_labels")[0][0]
        assert len(lines) == 1 + labelled

    # A removed user's session stops working at the next request.
    with httpx.Client(base_url=base, follow_redirects=False) as bob:
        _login(bob, "bob")
        done = clazzify("review-ui", "--db", db_url, "users", "remove", "bob")
        assert done.returncode == 0, done.stderr
        assert bob.get("/queue/low").status_code == 303


# -- the page as an attacker meets it ----------------------------------------------------------

#: Small throttle settings so that a lockout is served within the test: 2 free tries, then
#: 1 s doubling to 2 s, a 10 s lock after 5 failures (an address: 10 tries); 2 hashes at once;
#: sessions end after 2 s idle or 4 s after login.
GUARDED = ("--login-free-tries", "2", "--login-delay", "1", "--login-max-delay", "2",
           "--login-lockout-after", "5", "--login-lockout", "10", "--max-hashes", "2",
           "--session-idle", "2", "--session-lifetime", "4")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[tuple[str, str, int]]:
    """(base URL, database URL, server pid) of a review server on PostgreSQL with GUARDED."""
    tmp = tmp_path_factory.mktemp("review-guarded")
    with _database("postgresql", tmp) as db_url:
        seed_review_db(db_url, tmp / "photos", per_class=2)
        engine = create_db_engine(db_url)
        for name, role in (("alice", "admin"), ("bob", "moderator")):
            add_user(engine, name, PASSWORDS[name], role)
        engine.dispose()
        with review_process(db_url, tmp / "thumbs", *GUARDED) as (base, proc):
            yield base, db_url, proc.pid


def _client(base: str, source: str = "127.0.0.1") -> httpx.Client:
    """An HTTP client whose connections come from ``source`` (any 127.x address is loopback)."""
    return httpx.Client(base_url=base, follow_redirects=False, verify=False, timeout=30,
                        transport=httpx.HTTPTransport(local_address=source, verify=False))


def _csrf(client: httpx.Client) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)


def _try_login(client: httpx.Client, user: str, password: str) -> httpx.Response:
    return client.post("/login", data={"csrf_token": _csrf(client), "username": user, "password": password})


def test_wrong_passwords_slow_down_then_lock_the_account_and_the_address(guarded, browser: Browser):
    base, db_url, _ = guarded
    # The guesser's browser also claims another address; without --trusted-proxy nobody believes it.
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": "198.51.100.7"})
    page = context.new_page()

    def submit(password: str) -> tuple[int, float, bool]:
        """(status, the wait the page asks for, locked) of one login from the browser."""
        page.goto(f"{base}/login?next=/queue/low")  # a fresh form: the idle session lasts 2 s
        page.fill("input[name=username]", "bob")
        page.fill("input[name=password]", password)
        with page.expect_response(lambda r: r.request.method == "POST" and r.url == f"{base}/login") as info:
            page.click("main.login button[type=submit]")
        response = info.value
        page.wait_for_load_state()
        if response.status != 429:
            return response.status, 0.0, False
        assert int(response.headers["retry-after"]) >= 1
        error = page.locator("p.error")
        return 429, float(error.get_attribute("data-retry-after")), "locked" in error.inner_text()

    start = time.monotonic()
    tries = []  # (seconds since the first try, status, wait asked for, locked)
    for _ in range(20):  # 20 wrong passwords in a row; waits when told to, but not through a lock
        status, wait, locked = submit("not-bobs-password")
        tries.append((round(time.monotonic() - start, 2), status, round(wait, 2), locked))
        if status == 429 and not locked:
            page.wait_for_timeout(wait * 1000)
    print("\ntries (s, status, wait, locked):", tries)

    statuses = [t[1] for t in tries]
    assert statuses[:2] == [401, 401]  # the free tries
    last_checked = max(i for i, s in enumerate(statuses) if s == 401)
    assert statuses.count(401) == 5  # 5 checked wrong passwords lock the account...
    assert all(t[1] == 429 and t[3] for t in tries[last_checked + 1:])  # ...for the rest of the 20
    waits = [t[2] for t in tries if t[1] == 429 and not t[3]]
    assert waits and all(w > 0 for w in waits) and waits[-1] > waits[0]  # slower and slower before

    # During the lock the right password is refused: from this browser, from another address
    # for this account, and for another account from this address (10 tries locked it too).
    status, lock_left, locked = submit(PASSWORDS["bob"])
    assert status == 429 and locked and 0 < lock_left <= 10.0
    with _client(base, "127.0.0.2") as elsewhere:
        assert _try_login(elsewhere, "bob", PASSWORDS["bob"]).status_code == 429
    with _client(base, "127.0.0.1") as here:
        assert _try_login(here, "alice", PASSWORDS["alice"]).status_code == 429
    with _client(base, "127.0.0.3") as other:  # another account from another address: not slowed
        assert _try_login(other, "alice", PASSWORDS["alice"]).status_code == 303
    keys = {k for (k,) in query(db_url, "SELECT key FROM review_login_throttle")}
    assert {"user:bob", "addr:127.0.0.1"} <= keys
    assert not any("198.51.100.7" in k for k in keys)  # the forged X-Forwarded-For counted nowhere

    # After the lock the right password works.
    locked_at = time.monotonic()
    page.wait_for_timeout(lock_left * 1000 + 100)
    status, _, _ = submit(PASSWORDS["bob"])
    assert status == 303
    expect(page).to_have_url(f"{base}/queue/low")
    print(f"locked after {tries[last_checked][0]:.2f} s of guessing; the right password worked "
          f"{time.monotonic() - locked_at:.2f} s after the lock was measured at {lock_left:.2f} s left")
    context.close()


def test_parallel_guesses_run_at_most_max_hashes_argon2_checks(guarded):
    """24 guesses at once from 24 addresses (each within its free tries, so only the hash
    gate stands in the way): the server's peak memory grows by at most one more 64 MiB hash
    than it had already done, where 24 parallel hashes would take about 1.5 GiB."""
    base, _, pid = guarded
    with _client(base, "127.0.0.40") as c:
        assert _try_login(c, "alice", PASSWORDS["alice"]).status_code == 303  # one hash done
    before = peak_rss_mib(pid)
    n = 24
    clients = [_client(base, f"127.0.1.{i + 1}") for i in range(n)]
    tokens = [_csrf(c) for c in clients]
    barrier = threading.Barrier(n)

    def guess(i: int) -> tuple[int, float]:
        barrier.wait(timeout=30)
        t0 = time.monotonic()
        answer = clients[i].post("/login", data={"csrf_token": tokens[i], "username": f"guess{i}",
                                                 "password": "a wrong guess"})
        return answer.status_code, time.monotonic() - t0

    try:
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(guess, range(n)))
    finally:
        for c in clients:
            c.close()
    grown = peak_rss_mib(pid) - before
    statuses = Counter(s for s, _ in results)
    print(f"\n{n} parallel guesses: {dict(statuses)}, slowest answer {max(t for _, t in results):.2f} s, "
          f"server peak RSS {before:.0f} MiB -> +{grown:.0f} MiB")
    assert set(statuses) <= {401, 503} and statuses[401] >= 2
    assert grown < 64 + 48, f"peak RSS grew {grown:.0f} MiB: more than 2 hashes ran at once"


def test_sessions_end_after_the_idle_time_and_the_absolute_lifetime(guarded):
    base, _, _ = guarded
    with _client(base, "127.0.0.50") as idle:
        assert _try_login(idle, "alice", PASSWORDS["alice"]).status_code == 303
        assert idle.get("/queue/low").status_code == 200
        time.sleep(2.5)
        assert idle.get("/queue/low").status_code == 303  # idle longer than --session-idle 2
    with _client(base, "127.0.0.51") as busy:
        assert _try_login(busy, "alice", PASSWORDS["alice"]).status_code == 303
        start = time.monotonic()
        while busy.get("/queue/low").status_code == 200:  # active every 0.5 s: never idle
            assert time.monotonic() - start < 8, "the session outlived --session-lifetime 4"
            time.sleep(0.5)
        lasted = time.monotonic() - start
    print(f"\nan active session ended {lasted:.2f} s after login (--session-lifetime 4)")
    assert 3.4 <= lasted <= 5.5


def test_the_account_page_refuses_bad_password_changes(guarded):
    base, _, _ = guarded
    with _client(base, "127.0.0.60") as client:
        assert _try_login(client, "bob", PASSWORDS["bob"]).status_code == 303
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/account").text).group(1)

        def change(current: str, new: str, repeat: str) -> httpx.Response:
            return client.post("/account/password", data={"csrf_token": token, "current": current,
                                                           "new": new, "repeat": repeat})

        assert change(PASSWORDS["bob"], "bob-new-password", "bob-other-password").status_code == 400
        assert change("not-bobs-password", "bob-new-password", "bob-new-password").status_code == 401
        short = change(PASSWORDS["bob"], "short", "short")
        assert short.status_code == 400 and "too short" in short.text
        assert client.post("/account/password", data={"current": PASSWORDS["bob"], "new": "x" * 9,
                                                      "repeat": "x" * 9}).status_code == 403  # no CSRF
        assert client.get("/queue/low").status_code == 200  # nothing changed: still logged in
    with _client(base, "127.0.0.61") as again:
        assert _try_login(again, "bob", PASSWORDS["bob"]).status_code == 303


def _browser_login(page, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/login?next=/queue/low")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("main.login button[type=submit]")
    expect(page).to_have_url(f"{base}/queue/low")


def test_logging_out_everywhere_and_new_passwords_end_the_other_sessions(site, browser: Browser):
    base, db_url = site
    one, two = browser.new_context(), browser.new_context()
    a, b = one.new_page(), two.new_page()
    to_login = re.compile(r"/login\?next=")
    for page in (a, b):
        _browser_login(page, base, "alice", PASSWORDS["alice"])
    copied = {c["name"]: c["value"] for c in two.cookies()}  # a copy of b's cookie, elsewhere

    # Log out everywhere in a: b's next request goes to the login page, and so does the copy.
    a.goto(f"{base}/account")
    a.click("#logout-everywhere")
    expect(a).to_have_url(f"{base}/login")
    b.goto(f"{base}/queue/low")
    expect(b).to_have_url(to_login)
    with httpx.Client(base_url=base, cookies=copied, follow_redirects=False) as thief:
        assert thief.get("/queue/low").status_code == 303

    # A new password on the page: b's session ends, a's goes on.
    for page in (a, b):
        _browser_login(page, base, "alice", PASSWORDS["alice"])
    a.goto(f"{base}/account")
    a.fill("input[name=current]", PASSWORDS["alice"])
    a.fill("input[name=new]", "alice-new-password")
    a.fill("input[name=repeat]", "alice-new-password")
    a.click("#change-password")
    expect(a.locator("p.ok")).to_contain_text("Every other session of this account has ended")
    a.goto(f"{base}/queue/low")
    expect(a).to_have_url(f"{base}/queue/low")
    b.goto(f"{base}/queue/low")
    expect(b).to_have_url(to_login)

    # A new password from the command line ends a's session too (and restores the old one).
    done = clazzify("review-ui", "--db", db_url, "users", "passwd", "alice", "--password-stdin",
                    stdin=PASSWORDS["alice"] + "\n")
    assert done.returncode == 0, done.stderr
    a.goto(f"{base}/queue/low")
    expect(a).to_have_url(to_login)

    # `users logout` ends every session without touching the password.
    _browser_login(b, base, "alice", PASSWORDS["alice"])
    done = clazzify("review-ui", "--db", db_url, "users", "logout", "alice")
    assert done.returncode == 0, done.stderr
    b.goto(f"{base}/queue/low")
    expect(b).to_have_url(to_login)
    one.close()
    two.close()


def _raw_post(base: str, headers: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /login HTTP/1.1\r\nHost: {host}\r\n"
                 f"Content-Type: application/x-www-form-urlencoded\r\n{headers}\r\n".encode())
    return sock


def _read_answer(sock: socket.socket) -> str:
    """What the server sent until it closed the connection or went quiet for a second."""
    data = b""
    sock.settimeout(1)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data.decode(errors="replace")


def test_a_body_over_the_cap_gets_413_without_being_read(site):
    base, _ = site
    # 100 MB announced, 1 KB sent: the answer comes at once, without waiting for the rest.
    t0 = time.monotonic()
    with _raw_post(base, "Content-Length: 104857600\r\n") as sock:
        sock.sendall(b"username=" + b"x" * 1024)
        first = sock.recv(65536)
        took = time.monotonic() - t0
        answer = first.decode(errors="replace") + _read_answer(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "1048576-byte limit" in answer

    # A chunked body has no length: the app stops at the cap (1 MiB by default) and answers
    # while the client is still sending.
    chunk = b"x" * 65536
    sent = 0
    with _raw_post(base, "Transfer-Encoding: chunked\r\n") as sock:
        sock.settimeout(5)
        answer = ""
        try:
            while sent < 64 << 20:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    answer = _read_answer(sock)
                    break
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            answer = _read_answer(sock)  # the server stopped reading or closed
    print(f"\n413 for 100 MB announced in {took * 1000:.0f} ms; chunked: 413 after {sent / 2**20:.1f} MiB "
          f"of 64 MiB sent")
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert sent < 32 << 20, f"no answer until {sent} bytes of a chunked body were sent"


def test_plain_http_gets_no_hsts_and_tls_gets_hsts_and_secure_cookies(guarded, tmp_path):
    base, _, _ = guarded
    plain = httpx.get(f"{base}/login")
    assert "strict-transport-security" not in plain.headers
    assert "secure" not in plain.headers["set-cookie"].lower()

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    db_url = f"sqlite:///{tmp_path}/scores.db"
    repo = ScoreRepository.open(db_url)  # migrated, so that the user can be added first
    add_user(repo.engine, "bob", PASSWORDS["bob"], "moderator")
    repo.close()
    with review_server(db_url, tmp_path / "thumbs", "--tls-cert", str(cert), "--tls-key", str(key),
                       "--trusted-proxy", "127.0.0.1") as tls_base:
        assert tls_base.startswith("https://")
        with httpx.Client(base_url=tls_base, verify=str(cert), follow_redirects=False) as client:
            page = client.get("/login")
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            cookie = page.headers["set-cookie"].lower()
            assert "secure" in cookie and "httponly" in cookie
            # Behind a --trusted-proxy the address its X-Forwarded-For names is the one counted.
            token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
            answer = client.post("/login", data={"csrf_token": token, "username": "bob", "password": "wrong!!"},
                                 headers={"X-Forwarded-For": "203.0.113.9"})
            assert answer.status_code == 401
    keys = {k for (k,) in query(db_url, "SELECT key FROM review_login_throttle")}
    assert keys == {"user:bob", "addr:203.0.113.9"}
