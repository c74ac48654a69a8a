"""Exceptions that carry a message a user can act on; :func:`describe`, which puts the
failures of bad settings and unreachable services on one such line; and the handler every
entry point shares (:func:`run_command`, :func:`as_clean_error`): one ``Error: ...`` line,
exit code 2, the traceback above it only when verbose."""

from __future__ import annotations

import errno
import os
import re
import socket
import sys
import traceback
from collections.abc import Sequence

import click


class ClazzifyError(Exception):
    """Base class: a failure whose message names the bad value and the fix."""


class ConfigError(ClazzifyError, ValueError):
    """A configuration value is out of range or inconsistent."""


class StorageError(ClazzifyError):
    """Object storage is unreachable, misconfigured, or an object is missing."""


class ImageError(ClazzifyError, ValueError):
    """An image cannot be decoded or fails a quality check.

    Attributes:
        reason: a short machine-readable reason, used as the quarantine category.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DataError(ClazzifyError, ValueError):
    """A dataset, manifest or HDF5 file is unusable."""


# --- One line for a user ------------------------------------------------------------------
# Every entry point (the clazzify command, python -m pipelines.train, python -m serving)
# reports a bad path, setting, URL, credential, database, port or unreachable service as
# one line naming the thing and the fix. The families below are recognised by module and
# class name, so core imports none of the client libraries.

#: Top-level package of a client library -> (the service it talks to, where it is set).
SERVICES = {
    "pika": ("the RabbitMQ broker", "--amqp-url (or CLAZZIFY_AMQP_URL)"),
    "psycopg": ("PostgreSQL", "--db (or CLAZZIFY_DB_URL)"),
    "sqlalchemy": ("the database", "--db (or CLAZZIFY_DB_URL)"),
    "httpx": ("the model server", "--endpoint (or CLAZZIFY_ENDPOINT)"),
    "kfp": ("the KFP API server", "--host"),
    "kfp_server_api": ("the KFP API server", "--host"),
    "kubernetes": ("the Kubernetes API server", "your kubeconfig (KUBECONFIG) or in-cluster credentials"),
    "minio": ("object storage", "AWS_ENDPOINT_URL and the keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
    "mlflow": ("the MLflow tracking server", "--tracking-uri (or MLFLOW_TRACKING_URI)"),
    "uvicorn": ("the server's listening socket", "--http-port / --port"),
}
#: Transports under the clients above: the client that called them names the service.
_TRANSPORTS = {"urllib3", "requests", "httpcore", "anyio", "socket", "ssl", "asyncio", "selectors"}
_REFUSED = ("connection refused", "errno 111", "actively refused")
_DNS = ("name or service not known", "nodename nor servname", "temporary failure in name resolution",
        "failed to resolve", "no address associated", "could not translate host name")
_AUTH = ("password authentication failed", "access_refused", "authentication failed", "unauthorized",
         "invalidaccesskeyid", "signaturedoesnotmatch", "login was refused")


def one_line(e: BaseException, limit: int = 400) -> str:
    """``e``'s message on one line, at most ``limit`` characters."""
    text = " ".join(part.strip() for part in (str(e) or repr(e)).splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while e is not None and e not in seen and len(seen) < 12:
        seen.append(e)
        nxt = e.__cause__ or e.__context__
        # pika wraps the socket error as its first argument, or in .exception(s)
        wrapped = [e.args[0] if e.args else None, getattr(e, "exception", None),
                   (getattr(e, "exceptions", None) or [None])[-1]]
        if nxt is None:
            nxt = next((w for w in wrapped if isinstance(w, BaseException)), None)
        e = nxt  # type: ignore[assignment]
    return seen


def _package(obj: object) -> str:
    return (getattr(obj, "__module__", "") or "").split(".")[0]


def _service(chain: list[BaseException]) -> tuple[str, str] | None:
    """The service a failure came from: the exception's own package, else the innermost
    client library in its traceback that is not a bare transport."""
    for exc in chain:
        for cls in type(exc).__mro__:
            if _package(cls) in SERVICES:
                return SERVICES[_package(cls)]
    for exc in chain:
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_globals.get("__name__", "").split(".")[0])
            tb = tb.tb_next
        for name in reversed(frames):
            if name in SERVICES:
                return SERVICES[name]
    return None


def _where(exc: BaseException) -> str:
    """' at HOST:PORT' (or the URL) when the exception says where, without credentials."""
    request = getattr(exc, "_request", None)
    if request is not None and getattr(request, "url", None) is not None:
        url = request.url
        return f" at {url.scheme}://{url.host}{f':{url.port}' if url.port else ''}"
    pool = getattr(exc, "pool", None)
    if pool is not None and getattr(pool, "host", None):
        return f" at {pool.host}:{pool.port}"
    m = re.search(r'server at "([^"]+)"(?:\s*\([^)]*\))?, port (\d+)', str(exc))
    if m:
        return f" at {m[1]}:{m[2]}"
    return ""


def describe(e: BaseException) -> str | None:
    """One line naming what is wrong and the fix, for the failures a bad path, setting, URL,
    credential, database, port or an unreachable service raise; ``None`` for anything else
    (a bug, whose traceback the caller keeps).

    Args:
        e: the exception an entry point caught.
    """
    chain = _chain(e)
    for exc in chain:
        if isinstance(exc, ClazzifyError):
            return one_line(exc)
    service, option = _service(chain) or ("the service", "the URL you gave")
    where = next((w for w in map(_where, chain) if w), "")
    texts = " | ".join(one_line(exc, 1000).lower() for exc in chain)
    names = {type(exc).__name__ for exc in chain}
    for exc in chain:
        if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
            return f"the port is already in use ({one_line(exc, 160)}): stop what listens there or choose another port"
    if names & {"ProbableAuthenticationError", "AuthenticationError"} or any(a in texts for a in _AUTH):
        return (f"{service}{where} refused the credentials ({_detail(chain)}): fix the user and password "
                f"or key in {option}")
    if "ProbableAccessDeniedError" in names:
        return f"{service}{where} denied access ({_detail(chain)}): fix the virtual host or user in {option}"
    m = re.search(r'database "([^"]+)" does not exist', texts)
    if m:
        return (f'PostgreSQL{where} has no database "{m[1]}": create it (createdb -h HOST -U USER {m[1]}) '
                f"or fix {option}")
    m = re.search(r'role "([^"]+)" does not exist', texts)
    if m:
        return f'PostgreSQL{where} has no user "{m[1]}": fix the user in {option}'
    if names & {"gaierror"} or any(d in texts for d in _DNS):
        return f"cannot resolve the host name of {service}{where} ({_detail(chain)}): fix the host in {option}"
    if any(isinstance(exc, ConnectionRefusedError) for exc in chain) or any(r in texts for r in _REFUSED):
        return f"cannot reach {service}{where}: connection refused: start it, or fix {option}"
    if any(isinstance(exc, TimeoutError | socket.timeout) for exc in chain) or names & {
            "ConnectTimeout", "ReadTimeout", "ConnectTimeoutError"}:
        return f"{service}{where} did not answer in time: check that it runs and {option}"
    if names & {"AMQPConnectionError", "ConnectError", "MaxRetryError", "NewConnectionError",
                "ConnectionError", "StreamLostError"}:
        return f"cannot reach {service}{where} ({_detail(chain)}): check that it runs and {option}"
    if names & {"ArgumentError", "NoSuchModuleError"} and _package(type(chain[0])) == "sqlalchemy":
        return (f"not a database URL ({_detail(chain)}): use sqlite:///PATH or postgresql://USER@HOST/DB "
                f"in {option}")
    if "ConfigException" in names:
        return f"no Kubernetes credentials ({_detail(chain)}): set KUBECONFIG, or run inside the cluster"
    for exc in chain:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
            what = {FileNotFoundError: "no such file or folder", IsADirectoryError: "is a folder, not a file",
                    NotADirectoryError: "a part of the path is not a folder",
                    PermissionError: "permission denied"}[next(c for c in type(exc).__mro__ if c in (
                        FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError))]
            fix = "give a readable path, or change its permissions" if isinstance(exc, PermissionError) \
                else "check the path"
            return f"{exc.filename or one_line(exc, 200)}: {what}: {fix}"
    return None


def _detail(chain: list[BaseException]) -> str:
    """The most specific message in the chain, short."""
    for exc in reversed(chain):
        text = one_line(exc, 160)
        if text and text not in (type(exc).__name__, f"{type(exc).__name__}()"):
            return text
    return type(chain[0]).__name__


def ensure_port_free(host: str, port: int, option: str = "--port") -> None:
    """Refuse a busy port before a server starts (uvicorn only logs it and exits).

    Raises:
        ConfigError: ``host:port`` is taken; names the option that moves it.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            raise ConfigError(f"port {port} on {host} is already in use: stop what listens there "
                              f"or pass another {option}") from e


# --- The handler every entry point shares -------------------------------------------------

#: Exit code of a bad input or configuration (click's own usage errors exit 2 too).
BAD_INPUT = 2
#: Set by ``clazzify -v`` for the commands it starts too (``retrain`` runs the pipeline).
VERBOSE_ENV = "CLAZZIFY_VERBOSE"


class CleanError(click.ClickException):
    """One ``Error: ...`` line on stderr, exit code 2."""

    exit_code = BAD_INPUT


def verbose_errors() -> bool:
    """Whether an error's traceback is printed above its line (``clazzify -v``, $CLAZZIFY_VERBOSE)."""
    return os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def as_clean_error(e: BaseException) -> click.ClickException | None:
    """``e`` as the one line the user sees, or ``None`` for a bug (its traceback stays).

    A :class:`click.ClickException` keeps its message; click's default exit code 1 becomes
    2, a code of its own (say, a failed gate's) stays. A click ``Abort`` or ``Exit`` is no
    error and passes through. Verbose, the traceback is printed first.
    """
    if isinstance(e, click.ClickException):
        if e.exit_code == 1:
            e.exit_code = BAD_INPUT
        return e
    message = describe(e)
    if message is None:
        return None
    if verbose_errors():
        traceback.print_exception(e, file=sys.stderr)
    return CleanError(message)


def run_command(command: click.Command, args: Sequence[str] | None = None, prog_name: str | None = None) -> int:
    """Run a click command under the error contract; return its exit code.

    For entry points outside the ``clazzify`` group, ``sys.exit(run_command(cli))``; it
    lives in core so ``python -m clazzify.serving`` may use it under the import rule.
    """
    try:
        # A command's return value is no exit code (click's standalone mode ignores it too);
        # ctx.exit(n) and sys.exit(n) still set one.
        command.main(args=list(args) if args is not None else None, prog_name=prog_name,
                     standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    except Exception as e:
        clean = as_clean_error(e)
        if clean is None:
            raise
        clean.show()
        return clean.exit_code
    return 0
