"""HTTP edge added to KServe's FastAPI app: API keys, a body limit, request metrics, V2 infer,
the inference fast path, and error handlers that log a client's mistake as one line.

:class:`GuardMiddleware` is plain ASGI (no per-request task or body copy beyond the one
read KServe does anyway). The V2 infer route replaces KServe's, whose binary-extension
path turns each element into a Python string (UTF-8 only, so JPEG bytes fail with a 500)
and whose malformed-header paths raise 500s; this one parses with
:func:`clazzify.serving.protocol.parse_v2_body` and calls the same ``kserve.Model``.

:class:`InferenceFastPath` answers the two inference calls (V1 predict with a JSON body,
V2 infer) from the guard itself, calling the same ``kserve.Model`` as KServe's routes:
FastAPI's routing, request objects and middleware stack cost more of the event loop than
the rest of a request (profiled: benchmarks/README.md, "int8 and the request path").
Anything else, a CloudEvent or a non-JSON V1 body included, goes on to KServe's routes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from kserve import InferInput, InferRequest
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady

from clazzify.serving.auth import (
    authorize,
    bearer_token,
    is_control_path,
    is_open_path,
    route_label,
)
from clazzify.serving.metrics import ServingMetrics
from clazzify.serving.protocol import V2_BINARY_HEADER, PayloadError, parse_v2_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
# A child of KServe's logger: the same handler and format as the lines around it.
log = logging.getLogger("kserve.clazzify")


async def _reply(send: Send, status: int, error: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"error": error})
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    })
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Checks the API key, caps the body size and records every request's status and latency.

    Args:
        app: the ASGI app to guard.
        keys: accepted API keys; None disables authentication (``--insecure``).
        max_body_bytes: larger bodies get a 413 before the app sees them.
        metrics: where request counts and latencies go.
        admin_keys: the only keys accepted on ``/v2/repository/...`` (KServe's model
            repository extension: index, load, unload); empty refuses it to everyone.
        fast_path: answers the inference calls it recognises once the key and the body
            passed (:class:`InferenceFastPath`); None sends every call on to the app.
    """

    def __init__(
        self, app: Callable, *, keys: frozenset[str] | None, max_body_bytes: int,
        metrics: ServingMetrics, admin_keys: frozenset[str] = frozenset(),
        fast_path: InferenceFastPath | None = None,
    ) -> None:
        self.app = app
        self.fast_path = fast_path
        self.keys = keys
        self.admin_keys = admin_keys
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        method, path = scope["method"], scope["path"]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if await self._guard(scope, receive, send_status, method, path):
                status = 499  # the client went away before sending its body
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.observe_request(route_label(method, path), status, elapsed)

    async def _guard(
        self, scope: Scope, receive: Receive, send: Send, method: str, path: str
    ) -> bool:
        """Answer or pass the request on; True when the client disconnected mid-body."""
        headers = dict(scope["headers"])
        if not is_open_path(method, path):
            token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
            verdict = authorize(token, control=is_control_path(path), keys=self.keys,
                                admin_keys=self.admin_keys)
            if verdict.status:
                challenge = [(b"www-authenticate", b'Bearer realm="clazzify"')]
                await _reply(send, verdict.status, verdict.error,
                             challenge if verdict.status == 401 else [])
                return False
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await _reply(send, 413, self._too_large(int(declared)), [])
            return False
        if method not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return False
        # Read the body here (KServe reads it whole anyway) so a chunked body without a
        # Content-Length is capped too, then replay it to the app.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return True
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _reply(send, 413, self._too_large(size), [])
                return False
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if self.fast_path is not None and self.fast_path.handles(method, path, headers):
            status, payload = await self.fast_path.answer(method, path, headers, body)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(payload)).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return False
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)
        return False

    def _too_large(self, size: int) -> str:
        return (f"request body of {size} bytes exceeds the {self.max_body_bytes}-byte limit: "
                "send fewer or smaller images per request")


async def v2_infer(model: Any, model_name: str, body: bytes, headers: dict[str, str]) -> bytes:
    """One V2 infer call on ``model`` (a ``kserve.Model``): the JSON answer's bytes.

    Raises:
        ModelNotFound, ModelNotReady, InvalidInput: answered as 404, 503 and 400.
    """
    if model_name != model.name:
        raise ModelNotFound(model_name)
    if not model.ready:
        raise ModelNotReady(model_name)
    try:
        parsed = parse_v2_body(body, headers.get(V2_BINARY_HEADER))
    except PayloadError as e:
        raise InvalidInput(str(e)) from e
    inputs = [
        InferInput(name=str(inp.get("name", "")), shape=inp.get("shape"),
                   datatype=str(inp.get("datatype", "")), data=inp.get("data"))
        for inp in parsed["inputs"]
    ]
    request_id = parsed.get("id")
    infer_request = InferRequest(
        model_name=model_name, infer_inputs=inputs,
        request_id=request_id if isinstance(request_id, str) else None,
    )
    response, _ = await model(infer_request, headers=headers)
    rest, _ = response.to_rest()
    return orjson.dumps(rest)


async def v1_predict(model: Any, body: bytes, headers: dict[str, str]) -> bytes:
    """One V1 predict call with a JSON body on ``model``, as KServe's V1 route makes it
    (readiness, then the same ``Model.__call__``): the JSON answer's bytes.

    Raises:
        ModelNotReady, InvalidInput: answered as 503 and 400.
    """
    if not model.ready:
        raise ModelNotReady(model.name)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise InvalidInput(f"Unrecognized request format: {e}") from e
    response, _ = await model(payload, headers=headers)
    return orjson.dumps(response)


class InferenceFastPath:
    """The inference calls of one model, answered without FastAPI (see the module's text).

    Takes ``POST /v1/models/NAME:predict`` with a JSON body (no ``Content-Type``, or a JSON
    one; no CloudEvent ``ce-*`` headers) and ``POST /v2/models/NAME/infer``. Errors are
    answered as the app's handlers answer them: the client's as one warning line and
    ``{"error": ...}``, anything else as KServe's generic 500 with its traceback logged.
    """

    def __init__(self, model: Any) -> None:
        self.model = model
        self._v1 = f"/v1/models/{model.name}:predict"
        self._v2 = f"/v2/models/{model.name}/infer"

    def handles(self, method: str, path: str, headers: dict[bytes, bytes]) -> bool:
        if method != "POST":
            return False
        if path == self._v2:
            return True
        if path != self._v1 or any(name.startswith(b"ce-") for name in headers):
            return False
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip()
        return content_type.lower() in (b"application/json", b"")

    async def answer(self, method: str, path: str, raw_headers: dict[bytes, bytes],
                     body: bytes) -> tuple[int, bytes]:
        """``(status, JSON body)`` of one call that :meth:`handles` took."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers.items()}
        try:
            if path == self._v2:
                return 200, await v2_infer(self.model, self.model.name, body, headers)
            return 200, await v1_predict(self.model, body, headers)
        except Exception as e:  # the app's exception handlers, for this path
            return error_answer(method, path, e)


def error_answer(method: str, path: str, exc: Exception) -> tuple[int, bytes]:
    """``(status, JSON body)`` for an exception, logged as the app's handlers log it."""
    for exc_type, status in _QUIET_ERRORS:
        if isinstance(exc, exc_type):
            log.warning("%s %s -> %d %s", method, path, status, _one_line(exc))
            return status, orjson.dumps({"error": str(exc)})
    log.error("Exception:", exc_info=exc)  # KServe's generic handler
    return 500, orjson.dumps({"error": f"{type(exc).__name__} : {exc}"})


def add_v2_infer_route(app: FastAPI, model: Any) -> None:
    """Serve ``POST /v2/models/{name}/infer`` for ``model`` (a ``kserve.Model``): the same
    answer as the fast path, for a server started without it.

    Must run before KServe registers its routes: the first matching route wins.
    """

    async def infer(model_name: str, request: Request) -> Response:
        body = await request.body()
        answer = await v2_infer(model, model_name, body, dict(request.headers))
        return Response(answer, media_type="application/json")

    app.add_api_route("/v2/models/{model_name}/infer", infer, methods=["POST"],
                      response_model=None, tags=["V2"])


#: Answers that are the client's doing, or a state the server reports (not ready): logged as
#: one warning line. Anything else keeps KServe's handler, which logs the traceback.
_QUIET_ERRORS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, 400), (ModelNotFound, 404), (ModelNotReady, 503), (ServerNotReady, 503),
)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500]


def quiet_client_errors(app: FastAPI) -> None:
    """Answer KServe's client-error exceptions as KServe does, logging one warning line
    (no traceback: the stack says nothing about a client's bad input).

    Must run after KServe registered its own handlers (``RESTServer.create_application``).
    """
    for exc_type, _ in _QUIET_ERRORS:
        app.add_exception_handler(exc_type, _quiet_handler)


async def _quiet_handler(request: Request, exc: Exception) -> Response:
    status, body = error_answer(request.method, request.url.path, exc)
    return Response(body, status_code=status, media_type="application/json")
