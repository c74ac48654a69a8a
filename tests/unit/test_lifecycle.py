"""The server's lifecycle: readiness is the model's, an unloaded model can be loaded again,
and a port that cannot be bound is a clear error before anything loads."""

from __future__ import annotations

import asyncio
import socket

import pytest
from kserve import Model

from clazzify.core.errors import ConfigError
from clazzify.serving.lifecycle import (
    ReadinessDataPlane,
    ReloadingRepository,
    bind_http,
    check_port_free,
)

pytestmark = pytest.mark.unit


class _Model(Model):
    """A real kserve.Model whose load just counts."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.loads = 0

    def load(self) -> bool:
        self.loads += 1
        self.ready = True
        return True


def test_readiness_follows_unload_and_load():
    async def run():
        repo = ReloadingRepository()
        model = _Model("clazzify")
        model.load()
        repo.update(model)
        plane = ReadinessDataPlane(repo, frozenset({"clazzify"}))
        states = [(await plane.ready(), await plane.model_ready("clazzify"))]
        repo.unload("clazzify")
        states.append((await plane.ready(), await plane.model_ready("clazzify")))
        assert await repo.load("clazzify") is True
        states.append((await plane.ready(), await plane.model_ready("clazzify")))
        return states, model.loads

    states, loads = asyncio.run(run())
    assert states == [(True, True), (False, False), (True, True)]
    assert loads == 2


def test_a_server_with_no_model_is_not_ready_and_unknown_names_stay_unknown():
    async def run():
        repo = ReloadingRepository()
        assert not await ReadinessDataPlane(repo, frozenset()).ready()
        assert not await ReadinessDataPlane(repo, frozenset({"clazzify"})).ready()
        with pytest.raises(KeyError, match="no model named 'other'"):
            await repo.load("other")

    asyncio.run(run())


def test_a_busy_port_names_itself_and_the_flag():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use.*--http-port"):
            bind_http("127.0.0.1", port)
        with pytest.raises(ConfigError, match="--grpc-port"):
            check_port_free("127.0.0.1", port)


def test_a_foreign_address_names_the_host_option():
    with pytest.raises(ConfigError, match="--host 127.0.0.1"):
        bind_http("192.0.2.1", 0)  # TEST-NET-1: never this machine's


def test_bind_http_returns_a_bound_socket_on_the_host():
    sock = bind_http("127.0.0.1", 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()


def test_connections_on_the_bound_socket_send_without_nagles_delay():
    """The server listens on this socket (uvicorn ``serve(sockets=...)``): asyncio sets
    TCP_NODELAY on each accepted connection only when the socket says IPPROTO_TCP. Without
    it, every answer on a keep-alive connection waited ~40 ms for the client's delayed ACK
    (c=1 through the server: 52 ms a request instead of 12 ms)."""
    sock = bind_http("127.0.0.1", 0)
    port = sock.getsockname()[1]
    seen: list[int] = []

    async def main() -> None:
        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            seen.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0, "accepted connections keep Nagle's algorithm on"
