"""The review page in a real browser (Debian's Chromium driven by Playwright), on PostgreSQL
and SQLite, against `clazzify review-ui` running as a child process; then the rows it wrote.

Needs /usr/bin/chromium (apt `chromium`, installed by .ci/run) and PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from db_support import query
from playwright.sync_api import Browser, expect, sync_playwright
from review_support import CHROMIUM, CHROMIUM_ARGS, clazzify, review_server, seed_review_db

from clazzify.review.users import add_user
from clazzify.scoring.database import create_db_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a server and a browser per database

PG_ADMIN = os.environ.get("CLAZZIFY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORDS = {"alice": "alice-admin-pw", "bob": "bob-moderator-pw"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def site(request, tmp_path_factory) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a seeded review server with users alice (admin), bob."""
    tmp = tmp_path_factory.mktemp(f"review-{request.param}")
    name = f"clazzify_review_{uuid.uuid4().hex[:10]}"
    if request.param == "postgresql":
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        db_url = sa.make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    else:
        db_url = f"sqlite:///{tmp}/scores.db"
    try:
        seed_review_db(db_url, tmp / "photos", per_class=8)
        done = clazzify("review-ui", "--db", db_url, "users", "add", "alice", "--role", "admin",
                        "--password-stdin", stdin=PASSWORDS["alice"] + "\n")
        assert done.returncode == 0, done.stderr
        engine = create_db_engine(db_url)
        add_user(engine, "bob", PASSWORDS["bob"], "moderator")
        engine.dispose()
        with review_server(db_url, tmp / "thumbs") as base:
            yield base, db_url
    finally:
        if request.param == "postgresql":
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    assert page.evaluate("document.querySelector('#grid .card img').naturalWidth") > 0

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
