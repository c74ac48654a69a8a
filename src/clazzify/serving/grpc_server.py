"""V2 (Open Inference Protocol) gRPC on KServe's own server, behind the REST edge's guards.

KServe's :class:`~kserve.protocol.grpc.server.GRPCServer` runs the same ``DataPlane`` (and
so the same ``kserve.Model``, batcher and limits) as the REST server, but takes no
interceptors. :class:`GuardedGRPCServer` builds it with two more: :class:`ApiKeyInterceptor`
(the REST ``Authorization: Bearer`` check, on gRPC metadata) and the request metrics. The
body limit becomes gRPC's ``max_receive_message_length`` (RESOURCE_EXHAUSTED above it);
image count, size and pixel limits are the model's ``preprocess`` (INVALID_ARGUMENT).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer

from clazzify.serving.auth import bearer_token, key_matches
from clazzify.serving.metrics import ServingMetrics

_SERVICE = "/inference.GRPCInferenceService/"
#: Methods answered without a key, as the REST health paths are (probes carry none).
OPEN_METHODS = frozenset(_SERVICE + m for m in ("ServerLive", "ServerReady", "ModelReady"))


def grpc_route(method: str) -> str:
    """A low-cardinality metrics label for a gRPC method (as ``auth.route_label`` for REST)."""
    name = method.rsplit("/", 1)[-1]
    if name == "ModelInfer":
        return "grpc_infer"
    if method in OPEN_METHODS:
        return "grpc_health"
    return "grpc_metadata"


class ApiKeyInterceptor(aio.ServerInterceptor):
    """Refuses calls without an accepted ``authorization: Bearer <key>`` metadata entry
    (UNAUTHENTICATED) and records every call's status code and latency.

    Args:
        keys: accepted API keys; None disables authentication (``--insecure``).
        metrics: where request counts and latencies go (routes ``grpc_*``).
    """

    def __init__(self, keys: frozenset[str] | None, metrics: ServingMetrics) -> None:
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        route = grpc_route(method)
        if self.keys is not None and method not in OPEN_METHODS:
            metadata = dict(details.invocation_metadata or ())
            token = bearer_token(metadata.get("authorization"))
            if not key_matches(token, self.keys):
                reason = "missing" if token is None else "invalid"
                self.metrics.observe_request(route, grpc.StatusCode.UNAUTHENTICATED.value[0], 0.0)
                return _refuse(f"{reason} API key: send metadata 'authorization: Bearer <key>'")
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return _timed(handler, route, self.metrics)


def _refuse(message: str) -> grpc.RpcMethodHandler:
    async def abort(request: Any, context: aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

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


class GuardedGRPCServer(GRPCServer):
    """KServe's gRPC server with the API-key/metrics interceptor and the body limit."""

    def __init__(self, port: int, data_plane: Any, model_repository_extension: Any, *,
                 keys: frozenset[str] | None, metrics: ServingMetrics, max_message_bytes: int,
                 grace_period: int = 30) -> None:
        super().__init__(port, data_plane, model_repository_extension, kwargs={},
                         grace_period=grace_period)
        self._interceptor = ApiKeyInterceptor(keys, metrics)
        self._max_message_bytes = max_message_bytes

    async def start(self, max_workers: int) -> None:
        servicer = InferenceServicer(self._data_plane, self._model_repository_extension)
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            # Auth first: an unauthenticated call never reaches KServe's handlers.
            interceptors=(self._interceptor, ExceptionToStatusInterceptor()),
            options=[("grpc.max_receive_message_length", self._max_message_bytes),
                     ("grpc.max_send_message_length", self._max_message_bytes)],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"[::]:{self._port}")
        await self._server.start()
        await self._server.wait_for_termination()
