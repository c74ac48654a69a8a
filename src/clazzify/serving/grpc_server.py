"""V2 (Open Inference Protocol) gRPC on KServe's own server, behind the REST edge's guards.

KServe's :class:`~kserve.protocol.grpc.server.GRPCServer` runs the same ``DataPlane`` (and
so the same ``kserve.Model``, batcher and limits) as the REST server, but takes no
interceptors. :class:`GuardedGRPCServer` builds it with two more: :class:`ApiKeyInterceptor`
(the REST ``Authorization: Bearer`` check, on gRPC metadata) and the request metrics. The
body limit becomes gRPC's ``max_receive_message_length`` (RESOURCE_EXHAUSTED above it);
image count, size and pixel limits are the model's ``preprocess`` (INVALID_ARGUMENT).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from clazzify.serving.auth import authorize, bearer_token
from clazzify.serving.metrics import ServingMetrics

_SERVICE = "/inference.GRPCInferenceService/"
log = logging.getLogger("kserve.clazzify")
#: Methods answered without a key, as the REST health paths are (probes carry none).
OPEN_METHODS = frozenset(_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady"))


def grpc_route(method: str) -> str:
    """A low-cardinality metrics label for a gRPC method (as ``auth.route_label`` for REST)."""
    name = method.rsplit("/", 1)[-1]
    if name == "ModelInfer":
        return "grpc_infer"
    if method in OPEN_METHODS:
        return "grpc_health"
    if is_control_method(method):
        return "grpc_repository"
    return "grpc_metadata"


def is_control_method(method: str) -> bool:
    """Whether a gRPC method is the model repository extension's (``Repository*``: index,
    load, unload), whether or not KServe's servicer implements it."""
    return method.rsplit("/", 1)[-1].startswith("Repository")


class ApiKeyInterceptor(aio.ServerInterceptor):
    """Refuses calls without an accepted ``authorization: Bearer <key>`` metadata entry
    (UNAUTHENTICATED), refuses ``Repository*`` calls to all but admin keys
    (PERMISSION_DENIED) and records every call's status code and latency.

    Args:
        keys: accepted API keys; None disables authentication (``--insecure``).
        metrics: where request counts and latencies go (routes ``grpc_*``).
        admin_keys: the only keys accepted on ``Repository*`` methods; empty refuses them
            to everyone.
    """

    def __init__(self, keys: frozenset[str] | None, metrics: ServingMetrics,
                 admin_keys: frozenset[str] = frozenset()) -> None:
        self.keys = keys
        self.metrics = metrics
        self.admin_keys = admin_keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        route = grpc_route(method)
        if method not in OPEN_METHODS:
            metadata = dict(details.invocation_metadata or ())
            token = bearer_token(metadata.get("authorization"))
            verdict = authorize(token, control=is_control_method(method), keys=self.keys,
                                admin_keys=self.admin_keys)
            if verdict.status:
                code = (grpc.StatusCode.UNAUTHENTICATED if verdict.status == 401
                        else grpc.StatusCode.PERMISSION_DENIED)
                self.metrics.observe_request(route, code.value[0], 0.0)
                error = verdict.error.replace("'Authorization: Bearer <key>'",
                                              "metadata 'authorization: Bearer <key>'")
                return _refuse(code, error)
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return _timed(handler, route, self.metrics)


def _refuse(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(abort)


def _timed(handler: grpc.RpcMethodHandler, route: str,
           metrics: ServingMetrics) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def call(request: Any, context: aio.ServicerContext) -> Any:
        start = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN.value[0]
        try:
            response = await inner(request, context)
            code = (context.code() or grpc.StatusCode.OK).value[0]
            return response
        except BaseException:
            status = context.code()
            code = status.value[0] if status is not None else code
            raise
        finally:
            metrics.observe_request(route, code, time.perf_counter() - start)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class QuietExceptionToStatus(ExceptionToStatusInterceptor):
    """KServe's exception-to-status mapping, with a client's mistakes (and a model that is
    not there or not ready) logged as one warning line instead of a traceback."""

    _QUIET = ((InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
              (ModelNotFound, grpc.StatusCode.NOT_FOUND),
              (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
              (ServerNotReady, grpc.StatusCode.UNAVAILABLE))

    async def handle_exception(self, ex: Exception, request_or_iterator: Any,
                               context: aio.ServicerContext, method_name: str) -> None:
        for exc_type, code in self._QUIET:
            if isinstance(ex, exc_type):
                log.warning("gRPC %s -> %s %s", method_name, code.name,
                            " ".join(str(ex).split())[:500])
                await context.abort(code, str(ex))
        await super().handle_exception(ex, request_or_iterator, context, method_name)


class RepositoryServicer(InferenceServicer):
    """KServe's servicer with working ``RepositoryModelLoad``/``RepositoryModelUnload``.

    KServe 0.21's read the repository extension's return value, which is None, so each
    answered INTERNAL after (for unload) doing its work. Only admin keys reach these.
    """

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        await self._mode_repository_extension.load(model_name=request.model_name)
        return pb.RepositoryModelLoadResponse(model_name=request.model_name, isLoaded=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        await self._mode_repository_extension.unload(model_name=request.model_name)
        return pb.RepositoryModelUnloadResponse(model_name=request.model_name, isUnloaded=True)


class GuardedGRPCServer(GRPCServer):
    """KServe's gRPC server with the API-key/metrics interceptor and the body limit."""

    def __init__(self, port: int, data_plane: Any, model_repository_extension: Any, *,
                 keys: frozenset[str] | None, metrics: ServingMetrics, max_message_bytes: int,
                 grace_period: int = 30, host: str = "127.0.0.1",
                 admin_keys: frozenset[str] = frozenset()) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs={},
                         grace_period=grace_period)
        self._interceptor = ApiKeyInterceptor(keys, metrics, admin_keys)
        self._max_message_bytes = max_message_bytes
        self._address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self, max_workers: int) -> None:
        servicer = RepositoryServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # Auth first: an unauthenticated call never reaches KServe's handlers.
            interceptors=(self._interceptor, QuietExceptionToStatus()),
            options=[("grpc.max_receive_message_length", self._max_message_bytes),
                     ("grpc.max_send_message_length", self._max_message_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(self._address)
        await self._server.start()
        await self._server.wait_for_termination()
