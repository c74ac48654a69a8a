"""Review accounts: argon2 password hashes in the ``review_users`` table.

argon2-cffi does the hashing (memory-hard, salted, with parameters stored in the hash), so
nothing here handles salts or compares digests by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from clazzify.core.errors import ConfigError
from clazzify.scoring.schema import review_users, utcnow

ROLES = ("moderator", "admin")
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_MIN_PASSWORD = 8
_hasher = PasswordHasher()


@dataclass(frozen=True)
class User:
    username: str
    role: str

    @property
    def can_export(self) -> bool:
        return self.role == "admin"


def add_user(engine: sa.Engine, username: str, password: str, role: str = "moderator") -> User:
    """Create ``username``, or replace its password and role if it exists.

    Raises:
        ConfigError: a bad user name, a password under 8 characters or an unknown role.
    """
    if not _NAME.match(username):
        raise ConfigError(
            f"bad user name {username!r}: use 1-128 letters, digits or . _ @ -"
        )
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if len(password) < _MIN_PASSWORD:
        raise ConfigError(f"the password of {username!r} is too short: use at least {_MIN_PASSWORD} characters")
    row = {"username": username, "password_hash": _hasher.hash(password), "role": role,
           "created_at": utcnow()}
    with engine.begin() as conn:
        conn.execute(sa.delete(review_users).where(review_users.c.username == username))
        conn.execute(sa.insert(review_users), row)
    return User(username, role)


def remove_user(engine: sa.Engine, username: str) -> None:
    """Delete ``username``; their past decisions stay in the label history.

    Raises:
        ConfigError: no such user.
    """
    with engine.begin() as conn:
        deleted = conn.execute(sa.delete(review_users).where(review_users.c.username == username)).rowcount
    if not deleted:
        raise ConfigError(f"no review user {username!r}: `clazzify review-ui users list` shows them")


def list_users(engine: sa.Engine) -> list[User]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(review_users.c.username, review_users.c.role).order_by("username"))
        return [User(name, role) for name, role in rows]


def authenticate(engine: sa.Engine, username: str, password: str) -> User | None:
    """The user if the password matches, else None (unknown users cost a hash too)."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(review_users.c.password_hash, review_users.c.role).where(
                review_users.c.username == username
            )
        ).one_or_none()
    try:
        if row is None:
            _hasher.verify(_DUMMY_HASH, password)  # same time as a wrong password
            return None
        _hasher.verify(row.password_hash, password)
    except (VerificationError, InvalidHashError):
        return None
    return User(username, row.role)


def find_user(engine: sa.Engine, username: str) -> User | None:
    """The user as the database holds it now (a removed user's session stops working)."""
    with engine.connect() as conn:
        role = conn.scalar(sa.select(review_users.c.role).where(review_users.c.username == username))
    return None if role is None else User(username, role)


_DUMMY_HASH = _hasher.hash("not a password of anyone")
