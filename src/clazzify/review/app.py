"""The moderators' review web app: Starlette + Jinja2 + htmx, rendered on the server.

Routes:

- ``GET /login``, ``POST /login``, ``POST /logout``: accounts (:mod:`.users`), logins
  throttled per account and per address (:mod:`.throttle`);
- ``GET /account``, ``POST /account/password``, ``POST /logout-everywhere``: change the
  password, end every session of the account;
- ``GET /queue/{kind}`` and ``GET /queue/class/{label}``: a page of a queue (:mod:`.queues`);
- ``GET /counts``: the queue sizes, loaded by htmx after the page;
- ``POST /label``, ``POST /accept``, ``POST /undo``: decisions, written to ``manual_labels``
  with a row in ``label_history`` each;
- ``GET /thumb?id=``: a photo's thumbnail (:mod:`.thumbs`), only for ids the database holds;
- ``GET /stats``: reviewed today, model-vs-moderator confusion, queue sizes;
- ``GET /export.csv``: every manual label (admins only).

Sessions are signed cookies (itsdangerous through Starlette's ``SessionMiddleware``),
HttpOnly and SameSite=Lax, with a sliding idle expiry and an absolute lifetime; each carries
the account's session generation, checked on every request, so logging out everywhere or a
password change ends the others. Every POST must carry the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``) or gets 403. Request bodies are capped before
anything parses them; over TLS, cookies are ``Secure`` and responses carry HSTS
(:mod:`.middleware`).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from clazzify.core.errors import ClazzifyError, ConfigError, ImageError, StorageError
from clazzify.review import charts, queues, users
from clazzify.review.middleware import BodyLimit, SecurityHeaders
from clazzify.review.throttle import HashBusy, HashGate, LoginThrottle, ThrottleConfig, Throttled, retry_after
from clazzify.review.thumbs import ThumbnailCache
from clazzify.scoring.labels import NOT_A_CLASS
from clazzify.scoring.scores import ScoreRepository

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SESSION_COOKIE = "clazzify_review"


@dataclass(frozen=True)
class ReviewConfig:
    """Settings of the review app.

    Attributes:
        model_name: the model whose scores are reviewed.
        low_threshold: top probabilities below this fill the low-confidence queue.
        page_size: photos per page.
        routes: class -> the team its queue goes to (shown next to the queue).
        classes: the label choices, in key order (digits 1..9); empty: from the database.
        thumb_size: longer side of a thumbnail in px.
        thumb_cache: folder of cached thumbnails.
        secret_key: signs the session cookies; empty: a random one (sessions end on restart).
        https_only: always treat requests as TLS (``Secure`` cookies, HSTS), for a TLS proxy
            in front; without it, only requests whose scheme is https get them.
        cache_ttl_s: how long versions, classes and queue counts are reused.
        throttle: how failed logins slow down, then lock, an account and an address.
        max_hashes: argon2 password checks (64 MiB each) running at once.
        hash_wait_s: how long a login waits for a free check before 503.
        max_body_bytes: the largest request body; larger ones get 413 unread.
        session_idle_s: a session ends after this long without a request (sliding).
        session_lifetime_s: a session ends this long after its login, however active.
        training_mix: (class, share) of the champion's training set, drawn as the reference
            bar of the Stats page's class mix (empty: no reference bar).
        stats_days: days the Stats charts cover.
    """

    model_name: str = "clazzify"
    low_threshold: float = 0.6
    page_size: int = 100
    routes: tuple[tuple[str, str], ...] = (("human", "photo moderation"), ("menu", "content team"))
    classes: tuple[str, ...] = ()
    thumb_size: int = 256
    thumb_cache: Path = Path(".clazzify/thumbs")
    secret_key: str = ""
    https_only: bool = False
    cache_ttl_s: float = 30.0
    throttle: ThrottleConfig = ThrottleConfig()
    max_hashes: int = 4
    hash_wait_s: float = 2.0
    max_body_bytes: int = 1 << 20
    session_idle_s: int = 12 * 3600
    session_lifetime_s: int = 24 * 3600
    training_mix: tuple[tuple[str, float], ...] = ()
    stats_days: int = 14

    def __post_init__(self) -> None:
        if NOT_A_CLASS in self.classes:
            raise ConfigError(f"{NOT_A_CLASS!r} is the 'not a class' mark, never a class: "
                              "remove it from --classes")
        if not 1 <= self.stats_days <= 366:
            raise ConfigError(f"stats_days must be 1..366, got {self.stats_days}")
        if not 0.0 < self.low_threshold <= 1.0:
            raise ConfigError(f"low_threshold must be in (0, 1], got {self.low_threshold}")
        if not 1 <= self.page_size <= 500:
            raise ConfigError(f"page_size must be 1..500, got {self.page_size}")
        if not 16 <= self.thumb_size <= 1024:
            raise ConfigError(f"thumb_size must be 16..1024 px, got {self.thumb_size}")
        if not 1 <= self.max_hashes <= 64:
            raise ConfigError(f"max_hashes must be 1..64 concurrent password checks (--max-hashes), "
                              f"got {self.max_hashes}")
        if not 1024 <= self.max_body_bytes <= 1 << 30:
            raise ConfigError(f"max_body_bytes must be 1 KiB..1 GiB (--max-body), got {self.max_body_bytes}")
        if not 1 <= self.session_idle_s <= self.session_lifetime_s:
            raise ConfigError(f"sessions need 1 <= idle ({self.session_idle_s} s) <= lifetime "
                              f"({self.session_lifetime_s} s): set --session-idle at most --session-lifetime")


class _TTLCache:
    """A few slow answers (versions, classes, counts) kept for ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[Any, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = make()
        with self._lock:
            self._items[key] = (now, value)
        return value

    def forget(self, prefix: str) -> None:
        """Drop every entry whose key is a tuple starting with ``prefix``."""
        with self._lock:
            for key in [k for k in self._items if isinstance(k, tuple) and k[0] == prefix]:
                del self._items[key]


@dataclass
class _State:
    config: ReviewConfig
    repo: ScoreRepository
    thumbs: ThumbnailCache
    cache: _TTLCache
    templates: Jinja2Templates
    throttle: LoginThrottle
    hashes: HashGate

    @property
    def engine(self) -> sa.Engine:
        return self.repo.engine

    def versions(self) -> list[str]:
        def make() -> list[str]:
            with self.engine.connect() as conn:
                return queues.versions(conn, self.config.model_name)

        return self.cache.get("versions", make)

    def classes(self) -> list[str]:
        if self.config.classes:
            return list(self.config.classes)

        def make() -> list[str]:
            with self.engine.connect() as conn:
                return queues.class_names(conn, self.config.model_name)

        return self.cache.get("classes", make)

    def scope(self, request: Request) -> queues.Scope | None:
        """The versions this request reviews (``?version=``, ``?compare=``), None: no scores."""
        versions = self.versions()
        if not versions:
            return None
        version = request.query_params.get("version") or versions[0]
        if version not in versions:
            raise HTTPException(404, f"model version {version!r} has no scores; known: {', '.join(versions)}")
        others = [v for v in versions if v != version]
        other = request.query_params.get("compare") or (others[0] if others else None)
        if other is not None and other not in others:
            raise HTTPException(404, f"model version {other!r} has no scores to compare with")
        return queues.Scope(self.config.model_name, version, other, self.config.low_threshold)


def dom_id(image_id: str) -> str:
    """A valid, stable HTML id for a photo's card (image ids may hold any character)."""
    return "c-" + hashlib.blake2s(image_id.encode(), digest_size=8).hexdigest()


def _state(request: Request) -> _State:
    return request.app.state.review


def _csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


async def _check_csrf(request: Request) -> None:
    expected = request.session.get("csrf")
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        form = await request.form()
        sent = form.get("csrf_token")
    if not expected or not isinstance(sent, str) or not hmac.compare_digest(sent, expected):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")


Handler = Callable[[Request], Awaitable[Response]]


def login_required(*, admin: bool = False) -> Callable[[Handler], Handler]:
    """Redirect to /login without a session; 403 for a moderator on an admin route.

    POST handlers also get their CSRF token checked (403 without it).
    """

    def wrap(handler: Handler) -> Handler:
        @wraps(handler)
        async def inner(request: Request) -> Response:
            if request.method == "POST":
                await _check_csrf(request)
            user = await _session_user(request)
            if user is None:
                for key in ("user", "gen", "iat"):
                    request.session.pop(key, None)
                if request.headers.get("hx-request"):  # htmx: send the whole page to the login
                    return Response(status_code=401, headers={"HX-Redirect": "/login"})
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)
            _touch(request)
            if admin and not user.can_export:
                raise HTTPException(403, f"{user.username} is a {user.role}: only admins may do this")
            request.state.user = user
            return await handler(request)

        return inner

    return wrap


async def _session_user(request: Request) -> users.User | None:
    """The session's user if the session is still valid: the account exists, its session
    generation is the one the session was issued with, and the session is younger than the
    absolute lifetime."""
    session = request.session
    name, generation, issued = session.get("user"), session.get("gen"), session.get("iat")
    if not name or not isinstance(generation, int) or not isinstance(issued, int | float):
        return None
    state = _state(request)
    if time.time() - issued > state.config.session_lifetime_s:
        return None
    user = await run_in_threadpool(users.find_user, state.engine, name)
    if user is None or user.generation != generation:
        return None
    return user


def _touch(request: Request) -> None:
    """Re-sign the session cookie now and then, so the idle expiry slides with use.

    Starlette re-sends the cookie only when the session changes; without this, the idle
    expiry would count from the login, however busy the moderator.
    """
    now = time.time()
    every = min(60.0, _state(request).config.session_idle_s / 10)
    if now - float(request.session.get("seen", 0)) >= every:
        request.session["seen"] = round(now, 3)


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    state = _state(request)
    base = {
        "user": getattr(request.state, "user", None),
        "csrf_token": _csrf_token(request),
        "config": state.config,
    }
    return state.templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)


# -- accounts ---------------------------------------------------------------------------------


async def login_page(request: Request) -> Response:
    _touch(request)  # the form's CSRF token lives as long as the page is open and used
    return _render(request, "login.html", {"error": None, "next": _safe_next(request.query_params.get("next"))})


def _safe_next(target: str | None) -> str:
    """Only local paths: a login link cannot send the moderator to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class _Refused(Exception):
    """A password that was not checked: throttled (429) or no hash slot free (503)."""

    def __init__(self, status: int, message: str, wait: float) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.wait = wait


async def _check_password(request: Request, username: str, password: str) -> users.User | None:
    """The user if ``password`` is right, after the login throttle and inside the hash gate.

    Raises:
        _Refused: the throttle refused the try, or no hash slot came free in time.
    """
    state = _state(request)
    host = request.client.host if request.client else None
    try:
        await run_in_threadpool(state.throttle.attempt, username, host)
    except Throttled as e:
        log.warning("login of %r from %s refused for %.1f s (%s)", username, host, e.retry_after,
                    "locked" if e.locked else "too early")
        wait = f"{e.retry_after:.1f}"
        text = (f"Too many failed logins: locked, try again in {wait} s." if e.locked
                else f"Too many failed logins: wait {wait} s before the next try.")
        raise _Refused(429, text, e.retry_after) from e
    try:
        async with state.hashes.slot():
            user = await run_in_threadpool(users.authenticate, state.engine, username, password)
    except HashBusy as e:
        log.warning("login of %r from %s: %s", username, host, e)
        await run_in_threadpool(state.throttle.not_checked, username, host)
        raise _Refused(503, "The server is busy checking other logins: try again in a moment.", 1.0) from e
    if user is not None:
        await run_in_threadpool(state.throttle.succeeded, username, host)
    return user


def _refusal(request: Request, template: str, refused: _Refused, context: dict[str, Any]) -> Response:
    response = _render(request, template, {**context, "error": refused.message, "wait": refused.wait},
                       status_code=refused.status)
    response.headers["Retry-After"] = retry_after(refused.wait)
    return response


def _start_session(request: Request, user: users.User) -> None:
    request.session.clear()  # a new session id and CSRF token after login (no fixation)
    request.session["user"] = user.username
    request.session["gen"] = user.generation
    request.session["iat"] = round(time.time(), 3)
    _csrf_token(request)


async def login(request: Request) -> Response:
    await _check_csrf(request)
    form = await request.form()
    username = str(form.get("username", "")).strip()
    password = str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "/")))
    try:
        user = await _check_password(request, username, password)
    except _Refused as refused:
        return _refusal(request, "login.html", refused, {"next": target})
    if user is None:
        log.info("failed login for %r", username)
        return _render(request, "login.html", {"error": "Wrong user name or password.", "next": target},
                       status_code=401)
    _start_session(request, user)
    return RedirectResponse(target, status_code=303)


@login_required()
async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@login_required()
async def logout_everywhere(request: Request) -> Response:
    """End every session of this account, this one too (its session generation moves on)."""
    user = request.state.user
    await run_in_threadpool(users.end_sessions, _state(request).engine, user.username)
    log.info("%s logged out everywhere", user.username)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


@login_required()
async def account_page(request: Request) -> Response:
    return _render(request, "account.html", {"error": None, "message": None})


@login_required()
async def change_password(request: Request) -> Response:
    """A new password ends every other session of the account; this one goes on."""
    form = await request.form()
    user = request.state.user
    current, new, repeat = (str(form.get(k, "")) for k in ("current", "new", "repeat"))
    if new != repeat:
        return _render(request, "account.html", {"error": "The new passwords differ: type the same twice.",
                                                 "message": None}, status_code=400)
    try:
        checked = await _check_password(request, user.username, current)
    except _Refused as refused:
        return _refusal(request, "account.html", refused, {"message": None})
    if checked is None:
        return _render(request, "account.html", {"error": "The current password is wrong.", "message": None},
                       status_code=401)
    state = _state(request)
    try:
        async with state.hashes.slot():
            await run_in_threadpool(users.set_password, state.engine, user.username, new)
    except HashBusy:
        return _refusal(request, "account.html", _Refused(503, "The server is busy: try again in a moment.", 1.0),
                        {"message": None})
    except ConfigError as e:
        return _render(request, "account.html", {"error": f"{e}.", "message": None}, status_code=400)
    fresh = await run_in_threadpool(users.find_user, state.engine, user.username)
    if fresh is not None:
        request.session["gen"] = fresh.generation
    log.info("%s changed their password; their other sessions end", user.username)
    return _render(request, "account.html",
                   {"error": None, "message": "Password changed. Every other session of this account has ended."})


# -- queues -----------------------------------------------------------------------------------


def _queue_from(request: Request, kind: str, label: str | None) -> queues.Queue:
    params = request.query_params
    try:
        return queues.Queue(
            kind=kind,
            label=label,
            restaurant=params.get("restaurant") or None,
            source=params.get("source") or None,
            pending=params.get("status", "pending") != "all",
        )
    except ConfigError as e:
        raise HTTPException(404, str(e)) from e


def _filters(request: Request) -> dict[str, str]:
    """The query parameters a queue link keeps (filters and versions, not the cursor)."""
    keep = ("restaurant", "source", "status", "version", "compare")
    return {k: v for k in keep if (v := request.query_params.get(k))}


@login_required()
async def home(request: Request) -> Response:
    return RedirectResponse("/queue/low", status_code=303)


@login_required()
async def queue_page(request: Request) -> Response:
    kind = request.path_params.get("kind", "class")
    label = request.path_params.get("label")
    queue = _queue_from(request, kind, label)
    state = _state(request)
    after = None
    if cursor := request.query_params.get("after"):
        try:
            after = queues.Cursor.decode(cursor)
        except ConfigError as e:
            raise HTTPException(400, str(e)) from e

    def load() -> tuple[queues.Scope | None, list[queues.Card], queues.Cursor | None]:
        scope = state.scope(request)
        if scope is None:
            return None, [], None
        if queue.kind == "disagree" and scope.other_version is None:
            return scope, [], None
        with state.engine.connect() as conn:
            cards, nxt = queues.page(conn, scope, queue, after=after, limit=state.config.page_size)
        return scope, cards, nxt

    scope, cards, nxt = await run_in_threadpool(load)
    filters = _filters(request)
    classes = await run_in_threadpool(state.classes)
    return _render(
        request,
        "queue.html",
        {
            "queue": queue,
            "scope": scope,
            "cards": cards,
            "classes": classes,
            "routes": dict(state.config.routes),
            "filters": filters,
            "query": urlencode(filters),
            "next_url": f"{request.url.path}?{urlencode({**filters, 'after': nxt.encode()})}" if nxt else None,
            "first_url": f"{request.url.path}?{urlencode(filters)}" if after else None,
            "versions": await run_in_threadpool(state.versions),
        },
    )


@login_required()
async def counts_fragment(request: Request) -> Response:
    state = _state(request)
    params = request.query_params
    restaurant, source = params.get("restaurant") or None, params.get("source") or None

    def load() -> tuple[queues.Scope | None, queues.Counts | None]:
        scope = state.scope(request)
        if scope is None:
            return None, None

        def make() -> queues.Counts:
            with state.engine.connect() as conn:
                return queues.counts(conn, scope, restaurant, source)

        key = ("counts", scope, restaurant, source)
        return scope, state.cache.get(key, make)

    scope, counts = await run_in_threadpool(load)
    return _render(
        request,
        "_counts.html",
        {
            "counts": counts,
            "classes": await run_in_threadpool(state.classes),
            "routes": dict(state.config.routes),
            "query": urlencode(_filters(request)),
            "current": params.get("current", ""),
            "scope": scope,
        },
    )


# -- decisions --------------------------------------------------------------------------------


async def _form_ids(request: Request) -> list[str]:
    form = await request.form()
    ids = [str(v) for v in form.getlist("image_id") if str(v)]
    if not ids:
        raise HTTPException(400, "no image_id in the request")
    if len(ids) > 500:
        raise HTTPException(400, f"{len(ids)} photos in one request: at most 500")
    return ids


def _cards_response(request: Request, scope: queues.Scope | None, ids: list[str], message: str,
                    undone: str | None = None) -> Response:
    """The decided photos' cards and a toast. ``undone``: the photo an undo gave back, named in
    an ``undone`` event so the page moves its focus mark there (by id, whatever order the
    browser settles the swapped cards in)."""
    state = _state(request)
    cards: list[queues.Card] = []
    if scope is not None:
        with state.engine.connect() as conn:
            cards = queues.cards(conn, scope, ids)
    state.cache.forget("counts")
    response = _render(request, "_decided.html", {"cards": cards, "message": message, "classes": state.classes()})
    # "decided": the queue counts reload (debounced)
    response.headers["HX-Trigger"] = json.dumps({"decided": "", "undone": undone}) if undone else "decided"
    return response


@login_required()
async def label(request: Request) -> Response:
    """Set one photo's label (``label``), or accept the model's (``action=accept``)."""
    state = _state(request)
    form = await request.form()
    ids = await _form_ids(request)
    user = request.state.user
    accept = form.get("action") == "accept"

    def work() -> Response:
        scope = state.scope(request)
        if accept:
            if scope is None:
                raise HTTPException(404, "no scores to accept")
            with state.engine.connect() as conn:
                decided = queues.model_labels(conn, scope, ids)
            if not decided:
                raise HTTPException(404, f"no score of version {scope.version} for {ids[0]!r}")
        else:
            chosen = str(form.get("label", ""))
            if chosen not in state.classes() and chosen != NOT_A_CLASS:
                raise HTTPException(400, f"unknown label {chosen!r}: choose one of "
                                         f"{', '.join(state.classes())} or {NOT_A_CLASS}")
            decided = dict.fromkeys(ids, chosen)
        _known_or_404(state, list(decided))
        changes = state.repo.record_labels(decided.items(), labelled_by=user.username,
                                           action="accept" if accept else "label")
        text = ", ".join(f"{c.image_id} → {c.new_label}" for c in changes[:3])
        return _cards_response(request, scope, list(decided), f"Labelled {text}")

    return await run_in_threadpool(work)


def _known_or_404(state: _State, ids: list[str]) -> None:
    with state.engine.connect() as conn:
        for image_id in ids:
            if queues.uri_of(conn, image_id) is None:
                raise HTTPException(404, f"no photo {image_id!r} in the database")


@login_required()
async def accept_page(request: Request) -> Response:
    """Accept the model's label for every photo of the page that has no manual label yet."""
    state = _state(request)
    ids = await _form_ids(request)
    user = request.state.user

    def work() -> Response:
        scope = state.scope(request)
        if scope is None:
            raise HTTPException(404, "no scores to accept")
        with state.engine.connect() as conn:
            todo = queues.unlabelled(conn, ids)
            decided = queues.model_labels(conn, scope, todo)
        changes = state.repo.record_labels(decided.items(), labelled_by=user.username, action="bulk_accept")
        kept = len(ids) - len(changes)
        message = f"Accepted the model's label for {len(changes)} photos"
        if kept:
            message += f" ({kept} already labelled, left as they were)"
        return _cards_response(request, scope, [c.image_id for c in changes], message)

    return await run_in_threadpool(work)


@login_required()
async def undo(request: Request) -> Response:
    """Undo the user's last decision (one key press, or one bulk accept)."""
    state = _state(request)
    user = request.state.user

    def work() -> Response:
        changes, skipped = state.repo.undo_last(user.username)
        if not changes and not skipped:
            message = "Nothing to undo."
        else:
            message = f"Undid {len(changes)} label{'s' if len(changes) != 1 else ''}"
            if skipped:
                message += f"; {len(skipped)} relabelled by someone else since, kept"
        ids = [c.image_id for c in changes] + skipped
        return _cards_response(request, state.scope(request), ids, message, undone=ids[0] if ids else None)

    return await run_in_threadpool(work)


# -- thumbnails, stats, export ----------------------------------------------------------------


@login_required()
async def thumbnail(request: Request) -> Response:
    state = _state(request)
    image_id = request.query_params.get("id", "")

    def work() -> bytes:
        with state.engine.connect() as conn:
            uri = queues.uri_of(conn, image_id)
        if uri is None:
            raise HTTPException(404, "no such photo in the database")
        try:
            return state.thumbs.get(uri)
        except StorageError as e:
            log.warning("thumbnail of %s: %s", image_id, e)
            raise HTTPException(404, "the photo cannot be read from storage") from e
        except ImageError as e:
            raise HTTPException(422, f"the photo is not a readable image: {e}") from e

    data = await run_in_threadpool(work)
    return Response(data, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=86400"})


@login_required()
async def stats_page(request: Request) -> Response:
    state = _state(request)

    def load() -> tuple[queues.Scope | None, queues.Stats | None, queues.Counts | None, dict]:
        scope = state.scope(request)
        if scope is None:
            return None, None, None, {}
        with state.engine.connect() as conn:
            stats = queues.stats(conn, scope, state.classes())
        counts = state.cache.get(("counts", scope, None, None), lambda: _counts(state, scope))
        data = state.cache.get(("charts", scope), lambda: _chart_data(state, scope))
        return scope, stats, counts, _charts(data, stats.classes, dict(state.config.training_mix))

    scope, stats, counts, drawn = await run_in_threadpool(load)
    return _render(request, "stats.html", {"scope": scope, "stats": stats, "counts": counts,
                                           "routes": dict(state.config.routes), "charts": drawn,
                                           "days": state.config.stats_days})


def _chart_data(state: _State, scope: queues.Scope) -> queues.ChartData:
    with state.engine.connect() as conn:
        return queues.chart_data(conn, scope, state.config.stats_days)


def _charts(data: queues.ChartData, classes: list[str], training: dict[str, float]) -> dict:
    """The four SVG charts of the Stats page (see :mod:`clazzify.review.charts`)."""
    shown = [c for c in classes if c != NOT_A_CLASS]
    return {
        "class_mix": charts.class_mix(data.days, data.class_mix, shown, training or None),
        "confidence": charts.confidence(*data.confidence),
        "unknown": charts.unknown_rate(data.days, data.unknown),
        "agreement": charts.agreement(data.days, data.agreement, shown),
    }


def _counts(state: _State, scope: queues.Scope) -> queues.Counts:
    with state.engine.connect() as conn:
        return queues.counts(conn, scope)


@login_required(admin=True)
async def export_csv(request: Request) -> Response:
    from clazzify.core.csvsafe import escape_row

    state = _state(request)
    scope = await run_in_threadpool(state.scope, request)
    if scope is None:
        raise HTTPException(404, "no scores yet")

    def rows() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=queues.EXPORT_FIELDS)
        writer.writeheader()
        with state.engine.connect() as conn:
            for row in queues.export_rows(conn, scope):
                writer.writerow(escape_row(row))  # no formulas into a moderator's spreadsheet
                if buf.tell() > 64_000:
                    yield buf.getvalue()
                    buf.seek(0)
                    buf.truncate()
        yield buf.getvalue()

    filename = f"manual-labels-{scope.model_name}-v{scope.version}.csv"
    return StreamingResponse(rows(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# -- the app ----------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(f"{exc.status_code}: {exc.detail}\n", status_code=exc.status_code)


async def _clazzify_error(request: Request, exc: Exception) -> Response:
    return PlainTextResponse(f"400: {exc}\n", status_code=400)


def create_app(repo: ScoreRepository, config: ReviewConfig = ReviewConfig()) -> Starlette:
    """The review app on ``repo``'s database (migrated to the head revision by the caller)."""
    secret = config.secret_key or secrets.token_urlsafe(48)
    if not config.secret_key:
        log.warning("no --secret-file: sessions are signed with a random key and end on restart")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["percent"] = lambda p: f"{100 * float(p):.0f}%"
    templates.env.globals["dom_id"] = dom_id
    templates.env.globals["NOT_A_CLASS"] = NOT_A_CLASS
    routes = [
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/logout-everywhere", logout_everywhere, methods=["POST"]),
        Route("/account", account_page, methods=["GET"]),
        Route("/account/password", change_password, methods=["POST"]),
        Route("/", home),
        Route("/queue/class/{label}", queue_page),
        Route("/queue/{kind}", queue_page),
        Route("/counts", counts_fragment),
        Route("/label", label, methods=["POST"]),
        Route("/accept", accept_page, methods=["POST"]),
        Route("/undo", undo, methods=["POST"]),
        Route("/thumb", thumbnail),
        Route("/stats", stats_page),
        Route("/export.csv", export_csv),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders, always_tls=config.https_only),
        Middleware(BodyLimit, max_bytes=config.max_body_bytes),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie=SESSION_COOKIE,
                   max_age=config.session_idle_s, same_site="lax", https_only=config.https_only),
    ]
    app = Starlette(routes=routes, middleware=middleware,
                    exception_handlers={HTTPException: _http_error, ClazzifyError: _clazzify_error})
    app.state.review = _State(
        config=config,
        repo=repo,
        thumbs=ThumbnailCache(config.thumb_cache, config.thumb_size),
        cache=_TTLCache(config.cache_ttl_s),
        templates=templates,
        throttle=LoginThrottle(repo.engine, config.throttle),
        hashes=HashGate(config.max_hashes, config.hash_wait_s),
    )
    return app
