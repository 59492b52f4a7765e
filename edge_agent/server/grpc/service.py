"""`inference.GRPCInferenceService`: each RPC parses its message, calls the DataPlane, answers.

Domain errors become gRPC statuses here and only here, with the message the HTTP side sends
(INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE with `retry-after` and `grpc-retry-pushback-ms`
trailers for a full queue, UNAUTHENTICATED...), never a bare internal error. The bearer token
is read from the `authorization` metadata; ServerLive and ServerReady need none, as on HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from edge_agent.errors import (
    AgentError,
    InvalidRequestError,
    ModelNotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ServingError,
    UnauthorizedError,
)
from edge_agent.metrics import UNKNOWN_MODEL
from edge_agent.server.dataplane import DataPlane
from edge_agent.server.grpc import inference_pb2 as pb
from edge_agent.server.grpc.codec import decode_request, encode_response
from edge_agent.server.grpc.messages import (
    model_config_message,
    model_metadata_message,
    statistics_message,
)
from edge_agent.server.middleware import CLIENT_CLOSED, check_bearer, status_for

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"  # the upstream name clients call
ENDPOINT = "grpc_infer"  # the `endpoint` label of the request metrics
# Most specific first, as STATUS_BY_ERROR in middleware.py.
CODE_BY_ERROR: dict[type[AgentError], grpc.StatusCode] = {
    InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
    UnauthorizedError: grpc.StatusCode.UNAUTHENTICATED,
    RequestTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    PayloadTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestError: grpc.StatusCode.INVALID_ARGUMENT,
    ServingError: grpc.StatusCode.UNAVAILABLE,
    AgentError: grpc.StatusCode.INTERNAL,
}
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Any], Awaitable[Any]]


def code_for(error: AgentError) -> grpc.StatusCode:
    """The gRPC status code a domain error maps to."""
    for cls in type(error).__mro__:
        if cls in CODE_BY_ERROR:
            return CODE_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def _trailers(error: AgentError) -> tuple[tuple[str, str], ...]:
    if isinstance(error, OverloadedError):
        seconds = max(1, round(error.retry_after_s))
        return (("retry-after", str(seconds)), ("grpc-retry-pushback-ms", str(seconds * 1000)))
    if isinstance(error, UnauthorizedError):
        return (("www-authenticate", 'Bearer realm="edge-agent"'),)
    return ()


class InferenceService:
    """The RPCs of the service, over one DataPlane."""

    def __init__(self, dataplane: DataPlane, token: str | None) -> None:
        self.dataplane = dataplane
        self._token = None if token is None else token.encode()

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> Any:
        """Live while the process answers."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> Any:
        """Ready: serving a model and not draining."""
        return pb.ServerReadyResponse(ready=self.dataplane.is_ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> Any:
        """Whether the model (version) takes requests; NOT_FOUND for an unknown one."""
        ready = self.dataplane.model_ready(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> Any:
        """Name, version and extensions."""
        return pb.ServerMetadataResponse(**self.dataplane.server_metadata())

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> Any:
        """The model's inputs and outputs."""
        metadata = self.dataplane.model_metadata(request.name, request.version or None)
        return model_metadata_message(metadata)

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> Any:
        """Triton's model configuration extension."""
        config = self.dataplane.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=model_config_message(config))

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> Any:
        """Triton's statistics extension: one model, or every model when no name is given."""
        name = request.name or None
        version = request.version or None if name else None
        return statistics_message(self.dataplane.statistics(name, version))

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> Any:
        """Inference, metered like HTTP inference (probation and telemetry count it)."""
        started, status, version = time.perf_counter(), CLIENT_CLOSED, ""
        try:
            self._authorize(context)
            parsed = decode_request(request)
            result = await self.dataplane.infer(
                request.model_name, request.model_version or None, parsed
            )
            status, version = 200, result.model_version
            return encode_response(result)
        except AgentError as e:
            status = status_for(e)
            raise
        finally:
            self._observe(request.model_name, version, status, time.perf_counter() - started)

    def _observe(self, name: str, version: str, status: int, seconds: float) -> None:
        repository = self.dataplane.repository
        served = name in repository
        if not version and served:
            version = str(repository.get(name).version)  # failures count against it too
        self.dataplane.metrics.observe_request(
            model=name if served else UNKNOWN_MODEL,
            version=version,
            status=status,
            endpoint=ENDPOINT,
            seconds=seconds,
        )

    def _authorize(self, context: Any) -> None:
        if self._token is None:
            return
        headers = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        check_bearer(headers[0] if headers else None, self._token)

    def handler(self) -> Any:
        """The grpc generic handler serving every RPC under its upstream name."""
        rpcs: list[tuple[str, Handler, Any, bool]] = [
            ("ServerLive", self.server_live, pb.ServerLiveRequest, True),
            ("ServerReady", self.server_ready, pb.ServerReadyRequest, True),
            ("ModelReady", self.model_ready, pb.ModelReadyRequest, False),
            ("ServerMetadata", self.server_metadata, pb.ServerMetadataRequest, False),
            ("ModelMetadata", self.model_metadata, pb.ModelMetadataRequest, False),
            ("ModelInfer", self.model_infer, pb.ModelInferRequest, False),
            ("ModelConfig", self.model_config, pb.ModelConfigRequest, False),
            ("ModelStatistics", self.model_statistics, pb.ModelStatisticsRequest, False),
        ]
        methods = {
            name: grpc.unary_unary_rpc_method_handler(
                self._guarded(method, open_=open_ or method == self.model_infer),
                request_deserializer=message.FromString,
                response_serializer=_serialize,
            )
            for name, method, message, open_ in rpcs
        }
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    def _guarded(self, method: Handler, *, open_: bool) -> Handler:
        """`method` behind the token check (unless open) and the error mapping."""

        async def call(request: Any, context: Any) -> Any:
            try:
                if not open_:
                    self._authorize(context)
                return await method(request, context)
            except AgentError as e:
                if code_for(e) is grpc.StatusCode.INTERNAL:
                    log.error("gRPC %s failed: %s", type(request).__name__, e, exc_info=e)
                await context.abort(code_for(e), str(e), trailing_metadata=_trailers(e))
            except grpc.aio.AbortError:
                raise  # the status is set already (by the abort above)
            except Exception:
                log.exception("gRPC %s failed unexpectedly", type(request).__name__)
                await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

        return call


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data
