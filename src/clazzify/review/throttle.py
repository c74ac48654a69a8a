"""Login throttling per account and per client address, and a gate on argon2 hashes.

:class:`LoginThrottle` keeps its counts in the ``review_login_throttle`` table (migration
0003), next to the users, so that every replica of the review app sees the same counts and
a restart forgets nothing. Two keys are counted for each login: ``user:NAME`` and
``addr:ADDRESS`` (an IPv6 client counts as its /64, which one machine usually holds whole).

- A wrong password counts against both keys. After ``free_tries`` of them in a row, each
  next try must wait ``base_delay_s``, doubling per failure up to ``max_delay_s``; after
  ``lock_after`` the key is locked for ``lockout_s``. A try that comes too early or during a
  lock is refused with 429 and ``Retry-After``, without hashing the password, and even the
  right password is refused.
- Refused tries count against the address (which allows ``address_factor`` times more),
  never against the account: waiting is all an account owner has to do.
- A success clears the account's count, and takes back its own try from the address's.
- Counts end when their lock has been served, or ``forget_after_s`` after the last try.

Each try is counted *before* its password is checked, inside one transaction that locks the
two rows, so parallel guesses see each other's tries instead of all passing one check.

:class:`HashGate` bounds how many argon2 hashes (64 MiB, about 0.1 s of CPU each) run at
once; further logins wait up to ``wait_s`` in the event loop, and are refused with 503 after
that or when too many are already waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace

import sqlalchemy as sa

from clazzify.core.errors import ConfigError
from clazzify.scoring.schema import review_login_throttle

_throttle = review_login_throttle


@dataclass(frozen=True)
class ThrottleConfig:
    """How failed logins slow down and then lock an account and an address.

    Attributes:
        free_tries: wrong passwords in a row that cost no wait.
        base_delay_s: the wait after the first try past ``free_tries``; doubles per failure.
        max_delay_s: the longest wait between tries before the lock.
        lock_after: failures in a row that lock the key.
        lockout_s: how long a lock lasts.
        address_factor: an address gets this many times the account's tries (an office
            behind one address holds several moderators).
        forget_after_s: counts without a lock are forgotten this long after the last try.
    """

    free_tries: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    lock_after: int = 10
    lockout_s: float = 900.0
    address_factor: int = 2
    forget_after_s: float = 3600.0

    def __post_init__(self) -> None:
        if not 0 <= self.free_tries < self.lock_after:
            raise ConfigError(f"login free tries must be 0..{self.lock_after - 1}, under the lock "
                              f"threshold {self.lock_after} (--login-lockout-after), got {self.free_tries}")
        if not 0.0 <= self.base_delay_s <= self.max_delay_s:
            raise ConfigError(f"login delays must satisfy 0 <= base ({self.base_delay_s}) <= "
                              f"max ({self.max_delay_s}) seconds: check --login-delay and --login-max-delay")
        if self.lockout_s <= 0 or self.forget_after_s <= 0:
            raise ConfigError(f"login lockout ({self.lockout_s} s) and forget time "
                              f"({self.forget_after_s} s) must be positive")
        if self.address_factor < 1:
            raise ConfigError(f"login address factor must be >= 1, got {self.address_factor}")

    def delay(self, failures: int) -> float:
        """Seconds the next try waits after ``failures`` in a row (before the lock)."""
        if failures < self.free_tries:
            return 0.0
        return min(self.base_delay_s * 2.0 ** (failures - self.free_tries), self.max_delay_s)

    def for_addresses(self) -> ThrottleConfig:
        f = self.address_factor
        return replace(self, free_tries=self.free_tries * f, lock_after=self.lock_after * f)


class Throttled(Exception):
    """A login refused without checking its password."""

    def __init__(self, retry_after: float, locked: bool) -> None:
        super().__init__(f"too many login tries: retry in {retry_after:.1f} s")
        self.retry_after = retry_after
        self.locked = locked


def address_key(host: str | None) -> str:
    """The throttle key of a client address: IPv4 as is, IPv6 by its /64."""
    if not host:
        return "addr:unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"addr:{host[:150]}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"addr:{ip}"


def account_key(username: str) -> str:
    return f"user:{username[:150]}"


@dataclass
class _Count:
    key: str
    failures: int
    last_at: float
    locked_until: float | None

    def fresh(self, now: float, config: ThrottleConfig) -> _Count:
        """The count as it stands at ``now``: a served lock or an old count starts again."""
        if self.locked_until is not None and now >= self.locked_until:
            return _Count(self.key, 0, now, None)
        if self.locked_until is None and now - self.last_at > config.forget_after_s:
            return _Count(self.key, 0, now, None)
        return self

    def wait(self, now: float, config: ThrottleConfig) -> float:
        if self.locked_until is not None:
            return max(self.locked_until - now, 0.0)
        if self.failures == 0:
            return 0.0
        return max(self.last_at + config.delay(self.failures) - now, 0.0)

    def count(self, now: float, config: ThrottleConfig) -> None:
        self.failures += 1
        self.last_at = now
        if self.failures >= config.lock_after:
            self.locked_until = now + config.lockout_s


class LoginThrottle:
    """Counts login tries per account and per address in the scores database."""

    def __init__(self, engine: sa.Engine, config: ThrottleConfig = ThrottleConfig(),
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.config = config
        self.address_config = config.for_addresses()
        self.clock = clock
        self._lock = threading.Lock()  # one transaction at a time per process: no lock waits in SQLite
        self._last_sweep = 0.0

    def _rows(self, conn: sa.Connection, keys: list[str], now: float) -> dict[str, _Count]:
        insert = _upsert_ignore(self.engine, [{"key": k, "failures": 0, "last_at": now, "locked_until": None}
                                              for k in keys])
        conn.execute(insert)  # a write first: SQLite takes its write lock before the read
        query = sa.select(_throttle).where(_throttle.c.key.in_(keys))
        if self.engine.url.get_backend_name() == "postgresql":
            query = query.with_for_update()
        return {r.key: _Count(r.key, r.failures, r.last_at, r.locked_until) for r in conn.execute(query)}

    @staticmethod
    def _store(conn: sa.Connection, *counts: _Count) -> None:
        for c in counts:
            conn.execute(sa.update(_throttle).where(_throttle.c.key == c.key).values(
                failures=c.failures, last_at=c.last_at, locked_until=c.locked_until))

    def attempt(self, username: str, host: str | None) -> None:
        """Count a login try of ``username`` from ``host`` before its password is checked.

        Raises:
            Throttled: the try comes too early or during a lock; it was not allowed (and it
                counted against the address only).
        """
        now = self.clock()
        user_key, addr_key = account_key(username), address_key(host)
        refused: Throttled | None = None
        with self._lock, self.engine.begin() as conn:
            rows = self._rows(conn, [user_key, addr_key], now)
            user = rows[user_key].fresh(now, self.config)
            addr = rows[addr_key].fresh(now, self.address_config)
            if user.wait(now, self.config) > 0 or addr.wait(now, self.address_config) > 0:
                if addr.locked_until is None:
                    addr.count(now, self.address_config)
                wait = max(user.wait(now, self.config), addr.wait(now, self.address_config))
                refused = Throttled(wait, locked=user.locked_until is not None or addr.locked_until is not None)
            else:
                user.count(now, self.config)
                addr.count(now, self.address_config)
            self._store(conn, user, addr)
        if refused is not None:  # raised after the commit: the refused try stays counted
            raise refused
        self._sweep(now)

    def succeeded(self, username: str, host: str | None) -> None:
        """The password was right: clear the account, take this try back from the address."""
        self._take_back(username, host, clear_account=True)

    def not_checked(self, username: str, host: str | None) -> None:
        """The password could not be checked (the hash gate was full): the try does not count."""
        self._take_back(username, host, clear_account=False)

    def _take_back(self, username: str, host: str | None, *, clear_account: bool) -> None:
        now = self.clock()
        user_key, addr_key = account_key(username), address_key(host)
        with self._lock, self.engine.begin() as conn:
            rows = self._rows(conn, [user_key, addr_key], now)
            if clear_account:
                conn.execute(sa.delete(_throttle).where(_throttle.c.key == user_key))
                taken = [rows[addr_key]]
            else:
                taken = [rows[user_key], rows[addr_key]]
            for c, config in zip(taken, (self.address_config,) if clear_account
                                 else (self.config, self.address_config), strict=True):
                c.failures = max(c.failures - 1, 0)
                if c.failures < config.lock_after:
                    c.locked_until = None
            self._store(conn, *taken)

    def _sweep(self, now: float) -> None:
        """Delete counts nobody needs any more, at most once a minute per process."""
        if now - self._last_sweep < 60:
            return
        self._last_sweep = now
        stale = sa.or_(
            sa.and_(_throttle.c.locked_until.is_(None), _throttle.c.last_at < now - self.config.forget_after_s),
            _throttle.c.locked_until < now,
        )
        with self._lock, self.engine.begin() as conn:
            conn.execute(sa.delete(_throttle).where(stale))

    def state(self, key: str) -> tuple[int, float | None] | None:
        """(failures, locked_until) stored for ``key``, None without a row (for tests and ops)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_throttle.c.failures, _throttle.c.locked_until)
                               .where(_throttle.c.key == key)).one_or_none()
        return None if row is None else (row.failures, row.locked_until)


def _upsert_ignore(engine: sa.Engine, rows: list[dict]) -> sa.Executable:
    if engine.url.get_backend_name() == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    # The light table clause has no primary key: name the conflict column.
    return insert(_throttle).values(rows).on_conflict_do_nothing(index_elements=["key"])


class HashBusy(Exception):
    """No hash slot became free in time."""


class HashGate:
    """At most ``limit`` password hashes at once; others wait up to ``wait_s``, at most
    ``max_waiting`` of them, then :class:`HashBusy`.

    The waiting happens in the event loop, so waiting logins hold no threadpool thread and
    no hash memory. ``running`` and ``peak`` count the hashes in progress and the most ever.
    """

    def __init__(self, limit: int = 4, wait_s: float = 2.0, max_waiting: int = 64) -> None:
        if limit < 1:
            raise ConfigError(f"the number of concurrent password hashes must be >= 1, got {limit}")
        if wait_s < 0 or max_waiting < 0:
            raise ConfigError(f"hash wait ({wait_s} s) and queue ({max_waiting}) must be >= 0")
        self.limit = limit
        self.wait_s = wait_s
        self.max_waiting = max_waiting
        self.running = 0
        self.peak = 0
        self._waiting = 0
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._semaphore is None:  # made in the server's event loop, on first use
            self._semaphore = asyncio.Semaphore(self.limit)
        if self._waiting >= self.max_waiting:
            raise HashBusy(f"{self._waiting} logins already wait for a password check")
        self._waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=self.wait_s)
        except TimeoutError as e:
            raise HashBusy(f"no password check free within {self.wait_s} s") from e
        finally:
            self._waiting -= 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            yield
        finally:
            self.running -= 1
            self._semaphore.release()


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
