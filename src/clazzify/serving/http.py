"""HTTP edge added to KServe's FastAPI app: API keys, a body limit, request metrics, V2 infer,
and error handlers that log a client's mistake as one line.

:class:`GuardMiddleware` is plain ASGI (no per-request task or body copy beyond the one
read KServe does anyway). The V2 infer route replaces KServe's, whose binary-extension
path turns each element into a Python string (UTF-8 only, so JPEG bytes fail with a 500)
and whose malformed-header paths raise 500s; this one parses with
:func:`clazzify.serving.protocol.parse_v2_body` and calls the same ``kserve.Model``.
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
    """

    def __init__(
        self, app: Callable, *, keys: frozenset[str] | None, max_body_bytes: int,
        metrics: ServingMetrics, admin_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
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


def add_v2_infer_route(app: FastAPI, model: Any) -> None:
    """Serve ``POST /v2/models/{name}/infer`` for ``model`` (a ``kserve.Model``).

    Must run before KServe registers its routes: the first matching route wins.
    """

    async def infer(model_name: str, request: Request) -> Response:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        if not model.ready:
            raise ModelNotReady(model_name)
        body = await request.body()
        try:
            parsed = parse_v2_body(body, request.headers.get(V2_BINARY_HEADER))
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
        response, _ = await model(infer_request, headers=dict(request.headers))
        rest, _ = response.to_rest()
        return Response(orjson.dumps(rest), media_type="application/json")

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
    for exc_type, status in _QUIET_ERRORS:
        app.add_exception_handler(exc_type, _quiet_handler(status))


def _quiet_handler(status: int) -> Callable:
    async def handler(request: Request, exc: Exception) -> Response:
        log.warning("%s %s -> %d %s", request.method, request.url.path, status, _one_line(exc))
        return Response(orjson.dumps({"error": str(exc)}), status_code=status,
                        media_type="application/json")

    return handler
