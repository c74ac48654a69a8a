"""Run the model server in a subprocess on a free loopback port and talk to it over HTTP."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

KEY = "test-key-0123456789abcdef"
OTHER_KEY = "rotated-key-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, up to ``grace`` seconds to finish, then SIGKILL: every server a test starts."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Client:
    """A keep-alive HTTP/1.1 client for one server (stdlib only)."""

    def __init__(self, port: int, key: str | None = KEY, timeout: float = 30.0) -> None:
        self.port = port
        self.key = key
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: Mapping[str, str] | None = None, key: str | None = "default",
    ) -> tuple[int, bytes]:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        key = self.key if key == "default" else key
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        hdrs.update(headers or {})
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout
                )
            try:
                self._conn.request(method, path, body=body, headers=hdrs)
                resp = self._conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self.close()
                return resp.status, data
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, payload: object | None = None, **kw) -> tuple[int, dict]:
        body = None if payload is None else json.dumps(payload).encode()
        status, data = self.request(method, path, body, **kw)
        return status, json.loads(data) if data else {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def v1_body(images: Sequence[bytes]) -> dict:
    return {"instances": [{"b64": b64(img)} for img in images]}


def v2_body(images: Sequence[bytes]) -> dict:
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(img) for img in images]}]}


def v2_binary(images: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    raw = b"".join(len(img).to_bytes(4, "little") + img for img in images)
    header = json.dumps({"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return header + raw, {"inference-header-content-length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


@contextmanager
def running_server(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
    keys: str | None = f"{KEY},{OTHER_KEY}", ready_timeout: float = 120.0,
) -> Iterator[int]:
    """Start ``python -m clazzify.serving ARGS`` on a free port; yields the port once it is ready.

    gRPC listens on another free port unless ARGS name one (``--grpc-port``/``--grpc_port``).
    """
    with running_process(args, log_path, env, keys, ready_timeout) as (port, _):
        yield port


@contextmanager
def running_process(
    args: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
    keys: str | None = f"{KEY},{OTHER_KEY}", ready_timeout: float = 120.0,
) -> Iterator[tuple[int, subprocess.Popen]]:
    """:func:`running_server`, yielding the server process too (its pid, its memory)."""
    port = free_port()
    if not any(a in ("--grpc-port", "--grpc_port", "--enable_grpc") for a in args):
        args = ["--grpc-port", str(free_port()), *args]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    full_env.pop("CLAZZIFY_API_KEYS", None)
    full_env.pop("CLAZZIFY_HOST", None)  # the server's own default: loopback
    if keys:
        full_env["CLAZZIFY_API_KEYS"] = keys
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clazzify.serving", "--http-port", str(port), *args],
            stdout=log, stderr=subprocess.STDOUT, env=full_env,
        )
    try:
        deadline = time.monotonic() + ready_timeout
        client = Client(port, key=None, timeout=2.0)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log_path)}")
            try:
                if client.request("GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {ready_timeout}s:\n{_tail(log_path)}")
            time.sleep(0.25)
        client.close()
        yield port, proc
    finally:
        stop_process(proc, grace=20)


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_bytes()[-n:].decode(errors="replace")


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one Prometheus sample in an exposition ``text``."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on ``port`` at (Linux ``/proc/net/tcp*``)."""
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A = LISTEN
                continue
            raw = bytes.fromhex(address)
            words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]  # little-endian words
            packed = b"".join(words)
            text = socket.inet_ntop(socket.AF_INET if width == 8 else socket.AF_INET6, packed)
            found.add(text.removeprefix("::ffff:"))  # an IPv6 socket bound to an IPv4 address
    return found


def png16(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG, black but for a bright diagonal, written row by row: a 50 MP
    image costs a few tens of KB and never exists in the test's memory."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    packer = zlib.compressobj(9)
    parts = []
    row = bytearray(1 + 2 * width)  # filter byte 0, then big-endian 16-bit samples
    for y in range(height):
        x = 1 + 2 * (y * width // height)
        row[x : x + 2] = b"\xff\xff"
        parts.append(packer.compress(bytes(row)))
        row[x : x + 2] = b"\0\0"
    parts.append(packer.flush())
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))
