"""Real services for the worker's integration tests.

- a fresh PostgreSQL database per test (created and dropped) on the server at
  ``CLAZZIFY_TEST_PG_ADMIN`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``);
- uniquely named RabbitMQ queues per test on ``CLAZZIFY_TEST_AMQP``;
- an S3-compatible server (moto in server mode) on a free loopback port;
- a TCP proxy that can cut a dependency off and bring it back, so "database
  unreachable" and "endpoint down" happen for real without disturbing the shared
  PostgreSQL server other test runs use;
- the worker itself as a subprocess (``python -m clazzify.cli worker``), so it can be
  SIGKILLed and SIGTERMed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import pika
import pika.exceptions
import psycopg
import sqlalchemy as sa
from db_support import query
from serving_support import free_port

PG_ADMIN = os.environ.get("CLAZZIFY_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("CLAZZIFY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def fresh_pg_database() -> Iterator[str]:
    """Create a uniquely named database; yield its URL; drop it."""
    name = f"clazzify_test_{uuid.uuid4().hex[:12]}"
    admin = sa.make_url(PG_ADMIN)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    where = f"{admin.host}:{admin.port or 5432}"
    user = admin.username or "postgres"
    password = f":{admin.password}" if admin.password else ""
    try:
        yield f"postgresql://{user}{password}@{where}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def via_port(db_url: str, port: int) -> str:
    """The same database URL, reached through ``127.0.0.1:port`` (a :class:`TcpProxy`)."""
    return (
        sa.make_url(db_url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    )


def score_count(db_url: str) -> int:
    try:
        return query(db_url, "SELECT count(*) FROM scores")[0][0]
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        return 0  # not migrated yet, or the database is cut off


# -- RabbitMQ --------------------------------------------------------------------------------


class Queues:
    """A uniquely named upload queue and its dead-letter queue, deleted on close."""

    def __init__(self, amqp_url: str = AMQP_URL) -> None:
        self.amqp_url = amqp_url
        self.name = f"clazzify.test.{uuid.uuid4().hex[:10]}"
        self.dlq = f"{self.name}.dead"
        self._conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._ch = self._conn.channel()
        self._ch.confirm_delivery()
        for q in (self.name, self.dlq):
            self._ch.queue_declare(queue=q, durable=True)

    def publish(self, bodies: Sequence[bytes]) -> None:
        for body in bodies:
            self._ch.basic_publish("", self.name, body, pika.BasicProperties(delivery_mode=2))

    def depth(self, queue: str | None = None) -> int:
        """Messages ready in ``queue`` (unacknowledged ones held by a consumer are not counted)."""
        return self._ch.queue_declare(queue=queue or self.name, passive=True).method.message_count

    def dead_letters(self) -> list[tuple[dict, bytes]]:
        """Take every message from the dead-letter queue: (headers, body)."""
        out = []
        while True:
            method, props, body = self._ch.basic_get(self.dlq, auto_ack=True)
            if method is None:
                return out
            out.append((dict(props.headers or {}), body))

    def close(self) -> None:
        """Delete both queues, on a fresh connection if the broker dropped this one."""
        try:
            channel = self._ch if self._ch.is_open else None
        except pika.exceptions.AMQPError:
            channel = None
        conn = None
        if channel is None:
            conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
            channel = conn.channel()
        for q in (self.name, self.dlq):
            channel.queue_delete(queue=q)
        for c in (conn, self._conn):
            if c is not None and c.is_open:
                c.close()


# -- S3 (moto) -------------------------------------------------------------------------------


@contextmanager
def s3_server(log_path: Path) -> Iterator[dict[str, str]]:
    """Run moto's S3 server on a free port; yield the environment that points clients at it."""
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(up, 30, "moto S3 server")
        yield env
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# -- a proxy that can cut a dependency off ----------------------------------------------------


class TcpProxy:
    """Forward ``127.0.0.1:port`` to a target; :meth:`cut` refuses and drops every connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for s in self._sockets:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


# -- the worker process ------------------------------------------------------------------------


class WorkerProcess:
    """``clazzify worker`` in a subprocess, logging JSON lines to ``log_path``."""

    def __init__(
        self, args: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.log_path = log_path
        full_env = {**os.environ, **(env or {})}
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "clazzify.cli", "worker", "--log-format", "json", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def peak_rss(self) -> int:
        """The worker's peak resident memory so far, in bytes (``VmHWM`` of /proc).

        Read from the live process: ``ru_maxrss`` from ``wait4`` would also count the memory
        of the test process the worker was forked from (Linux carries it across exec).
        """
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmHWM in /proc/{self.proc.pid}/status")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=20)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)
        self._log.close()
