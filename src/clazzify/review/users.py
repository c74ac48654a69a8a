"""Review accounts: argon2 password hashes and session generations in ``review_users``.

argon2-cffi does the hashing (memory-hard, salted, with parameters stored in the hash), so
nothing here handles salts or compares digests by hand.

Each account has a session generation (migration 0003). The app writes it into every session
cookie at login and compares it on each request; :func:`end_sessions` and
:func:`set_password` bump it, so every session issued before stops at its next request.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from clazzify.core.errors import ConfigError
from clazzify.scoring.schema import review_users, utcnow

ROLES = ("moderator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_MIN_PASSWORD = 8
_hasher = PasswordHasher()

_users = review_users


@dataclass(frozen=True)
class User:
    username: str
    role: str
    #: the account's session generation when it was read; not part of its identity
    generation: int = field(default=0, compare=False)

    @property
    def can_export(self) -> bool:
        return self.role == "admin"


def _check_password(username: str, password: str) -> None:
    if len(password) < _MIN_PASSWORD:
        raise ConfigError(f"the password of {username!r} is too short: use at least {_MIN_PASSWORD} characters")


def add_user(engine: sa.Engine, username: str, password: str, role: str = "moderator") -> User:
    """Create ``username``, or replace its password and role if it exists.

    Replacing the password of an existing account ends its open sessions, like
    :func:`set_password`.

    Raises:
        ConfigError: a bad user name, a password under 8 characters or an unknown role.
    """
    if not _NAME.match(username):
        raise ConfigError(
            f"bad user name {username!r}: use 1-128 letters, digits or . _ @ -"
        )
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    _check_password(username, password)
    hashed = _hasher.hash(password)
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(_users).where(_users.c.username == username).values(
                password_hash=hashed, role=role, session_generation=_users.c.session_generation + 1)
        ).rowcount
        if not changed:
            # A random first generation: a cookie of a removed account of the same name,
            # whose generation was counted from elsewhere, does not match the new account.
            conn.execute(sa.insert(_users).values(
                username=username, password_hash=hashed, role=role, created_at=utcnow(),
                session_generation=secrets.randbelow(2**31 - 1)))
    return User(username, role)


def set_password(engine: sa.Engine, username: str, password: str) -> None:
    """Give ``username`` a new password and end all of its sessions.

    Raises:
        ConfigError: no such user, or a password under 8 characters.
    """
    _check_password(username, password)
    hashed = _hasher.hash(password)
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(_users).where(_users.c.username == username).values(
                password_hash=hashed, session_generation=_users.c.session_generation + 1)
        ).rowcount
    if not changed:
        raise ConfigError(f"no review user {username!r}: `clazzify review-ui users list` shows them")


def end_sessions(engine: sa.Engine, username: str) -> int:
    """End every session of ``username`` (log out everywhere); returns the new generation.

    Raises:
        ConfigError: no such user.
    """
    with engine.begin() as conn:
        changed = conn.execute(
            sa.update(_users).where(_users.c.username == username).values(
                session_generation=_users.c.session_generation + 1)
        ).rowcount
        generation = conn.scalar(sa.select(_users.c.session_generation).where(_users.c.username == username))
    if not changed or generation is None:
        raise ConfigError(f"no review user {username!r}: `clazzify review-ui users list` shows them")
    return int(generation)


def remove_user(engine: sa.Engine, username: str) -> None:
    """Delete ``username``; their past decisions stay in the label history.

    Raises:
        ConfigError: no such user.
    """
    with engine.begin() as conn:
        deleted = conn.execute(sa.delete(_users).where(_users.c.username == username)).rowcount
    if not deleted:
        raise ConfigError(f"no review user {username!r}: `clazzify review-ui users list` shows them")


def list_users(engine: sa.Engine) -> list[User]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(_users.c.username, _users.c.role).order_by(_users.c.username))
        return [User(name, role) for name, role in rows]


def authenticate(engine: sa.Engine, username: str, password: str) -> User | None:
    """The user if the password matches, else None (unknown users cost a hash too).

    Each call runs one argon2 hash (64 MiB, about 0.1 s of CPU): the web app calls it only
    inside its hash gate and after its login throttle.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(_users.c.password_hash, _users.c.role, _users.c.session_generation).where(
                _users.c.username == username
            )
        ).one_or_none()
    try:
        if row is None:
            _hasher.verify(_DUMMY_HASH, password)  # same time as a wrong password
            return None
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return User(username, row.role, row.session_generation)


def find_user(engine: sa.Engine, username: str) -> User | None:
    """The user as the database holds it now (a removed user's session stops working)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(_users.c.role, _users.c.session_generation).where(_users.c.username == username)
        ).one_or_none()
    return None if row is None else User(username, row.role, row.session_generation)


_DUMMY_HASH = _hasher.hash("not a password of anyone")
