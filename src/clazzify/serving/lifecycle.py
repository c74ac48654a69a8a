"""KServe's ModelServer, with honest readiness, a chosen interface and ports checked first.

KServe 0.21 binds ``0.0.0.0`` unconditionally, answers ``/v2/health/ready`` with true
whatever its models' state (so an unloaded model left a "ready" pod behind), and its
repository ``load`` cannot bring an unloaded model back. Here:

- :class:`ReadinessDataPlane`: the server is ready only while every model it was started
  with is registered and ready; a model that was unloaded reads as not ready (REST 503,
  gRPC ``ready: false``), not as an unknown name;
- :class:`ReloadingRepository`: ``load`` of an unloaded model loads it again (the control
  plane is closed unless admin keys are configured, see :mod:`clazzify.serving.auth`);
- :func:`bind_http` / :func:`check_port_free`: the ports are taken before the model
  loads, so a busy port is one clear error, not a traceback after a minute of loading;
- :class:`ClazzifyModelServer`: KServe's ModelServer on the socket bound here, with
  :func:`clazzify.serving.http.quiet_client_errors` installed after KServe's handlers.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kserve import ModelServer
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.rest.server import RESTServer

from clazzify.core.errors import ConfigError
from clazzify.serving.http import quiet_client_errors


class ReadinessDataPlane(DataPlane):
    """KServe's data plane whose readiness is its models'.

    Args:
        model_registry: the server's model repository.
        expected: names of the models the server was started with.
    """

    def __init__(self, model_registry: ModelRepository, expected: frozenset[str]) -> None:
        super().__init__(model_registry=model_registry)
        self.expected = expected

    async def ready(self) -> bool:
        """Ready while every expected model is registered and ready (and there is one)."""
        if not self.expected:
            return False
        for name in self.expected:
            if not await self._model_registry.is_model_ready(name):
                return False
        return True

    async def model_ready(self, model_name: str,
                          disable_predictor_health_check: bool = False) -> bool:
        """False (not a 404) for an expected model that was unloaded."""
        if model_name in self.expected and self._model_registry.get_model(model_name) is None:
            return False
        return await super().model_ready(model_name, disable_predictor_health_check)


def drop_timing_middleware(app: Any) -> None:
    """Take KServe's timing middleware out of ``app`` before it starts.

    Its only output is two lines per request on the ``kserve.trace`` logger, which the
    server keeps at WARNING (``/metrics`` has the same latencies), yet it asks the kernel
    for the process's CPU time twice per request: 13% of the event loop's time, profiled
    (benchmarks/README.md, "int8 and the request path").
    """
    from timing_asgi import TimingMiddleware

    app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]


class ReloadingRepository(ModelRepository):
    """A model repository whose ``load`` re-loads a model it was started with.

    KServe's base ``load`` does nothing, so after an unload the model could never come back
    without a restart.
    """

    def __init__(self) -> None:
        super().__init__()
        self.known: dict[str, Any] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        super().update(model, name)
        self.known[name or model.name] = model

    async def load(self, name: str) -> bool:
        model = self.known.get(name)
        if model is None:
            raise KeyError(f"no model named {name!r} was started on this server")
        if self.get_model(name) is None:
            await asyncio.get_running_loop().run_in_executor(None, model.load)
            self.models[name] = model
        return bool(model.ready)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(host: str, port: int, flag: str) -> socket.socket:
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only
    # on connections whose socket says IPPROTO_TCP. With 0, every answer on a keep-alive
    # connection waited ~40 ms for the client's delayed ACK (a response is two writes).
    sock = socket.socket(_family(host), socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # As uvicorn's own bind: a restart may reuse a port in TIME_WAIT; two listeners cannot.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another server?): stop that "
                f"process or choose a free port with {flag}"
            ) from e
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise ConfigError(
                f"cannot listen on {host}: it is not an address of this machine; use "
                "--host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)"
            ) from e
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"no permission to listen on port {port}: use a port above 1023 with {flag}"
            ) from e
        raise ConfigError(f"cannot listen on {host}:{port} ({e}): check --host and {flag}") from e
    return sock


def bind_http(host: str, port: int) -> socket.socket:
    """The HTTP server's bound socket (uvicorn listens on it).

    Raises:
        ConfigError: the port is taken, the address is not this machine's, or no permission.
    """
    return _bind(host, port, "--http-port")


def check_port_free(host: str, port: int) -> None:
    """Fail now if the gRPC server could not bind ``host:port`` later.

    Raises:
        ConfigError: as :func:`bind_http`, naming ``--grpc-port``.
    """
    _bind(host, port, "--grpc-port").close()


class ClazzifyModelServer(ModelServer):
    """KServe's ModelServer (one process) on an already bound HTTP socket.

    Args:
        http_socket: from :func:`bind_http`.
        expected: names of the models :meth:`start` registers (readiness waits for them).
        grpc_server: a started-later gRPC server (``GuardedGRPCServer``), or None.
        **kwargs: ModelServer's arguments.
    """

    def __init__(self, http_socket: socket.socket, expected: frozenset[str], *,
                 grpc_server_factory: Any = None, **kwargs: Any) -> None:
        super().__init__(registered_models=ReloadingRepository(), enable_grpc=False, **kwargs)
        self.dataplane = ReadinessDataPlane(self.registered_models, expected)
        self._http_socket = http_socket
        self._grpc_server_factory = grpc_server_factory

    def start(self, models: list[Any]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        host, port = self._http_socket.getsockname()[:2]
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, port,
            access_log_format=self.access_log_format, workers=1,
            grace_period=self.grace_period, event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive, ssl_certfile=self.ssl_certfile,
            ssl_keyfile=self.ssl_keyfile,
        )
        self._rest_server.config.host = host  # what uvicorn reports; the socket is bound
        self.servers.append(self._serve_rest(self._rest_server))
        if self._grpc_server_factory is not None:
            self._grpc_server = self._grpc_server_factory(self)
            self.servers.append(self._grpc_server.start(self.max_threads))
        self.register_signal_handler()
        # KServe's own start() configures the loop it finds (setup_event_loop), then
        # asyncio.run() makes another: its ``--event_loop auto`` (uvloop) and
        # ``--max_asyncio_workers`` never reach the loop that serves. Here the loop that
        # serves is configured (:meth:`_serve_on_this_loop`) and no other.
        with asyncio.Runner(loop_factory=self._loop_factory()) as runner:
            runner.run(self._serve_on_this_loop())

    def _loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop]:
        if self.event_loop in ("auto", "uvloop"):
            try:
                import uvloop
            except ImportError:
                if self.event_loop == "uvloop":
                    raise ConfigError("--event_loop uvloop needs the uvloop package") from None
            else:
                return uvloop.new_event_loop
        return asyncio.new_event_loop

    async def _serve_on_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.default_exception_handler)
        # max_workers None: Python's min(32, cores + 4), the formula KServe uses too.
        loop.set_default_executor(ThreadPoolExecutor(
            max_workers=self.max_asyncio_workers, thread_name_prefix="clazzify-decode"))
        await self._serve()

    async def _serve_rest(self, rest: RESTServer) -> None:
        rest.create_application()
        from kserve.model_server import app

        quiet_client_errors(app)  # after KServe's own handlers, which it replaces
        drop_timing_middleware(app)
        await rest._server.serve(sockets=[self._http_socket])
