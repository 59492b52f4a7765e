"""Errors raised by edge_agent: one root, split by cause.

These are domain errors: they carry no HTTP status codes. `edge_agent/server/middleware.py` is
the one place that maps them to statuses and `{"error": "..."}` bodies. Messages are written
for the person who sent the request or wrote the config: they name the thing that is wrong
and what was expected.
"""

from __future__ import annotations

from edge_common.mqtt import errors as mqtt_errors


class AgentError(Exception):
    """Root of every error edge_agent raises."""


# --- configuration ---------------------------------------------------------------------


class ConfigError(AgentError, ValueError):
    """A setting that is missing, malformed or out of range; the message names the key."""


# --- a client's request is wrong: the client can fix it ------------------------------


class RequestError(AgentError):
    """A request a client must change before it can succeed."""


class InvalidRequestError(RequestError, ValueError):
    """A malformed body, or tensors that do not match the model's inputs."""


class PayloadTooLargeError(RequestError):
    """A request body larger than the configured limit."""


class UnsupportedMediaTypeError(RequestError):
    """A Content-Type or Content-Encoding the server does not accept."""


class UnauthorizedError(RequestError):
    """A missing or wrong bearer token."""


class RequestTimeoutError(RequestError):
    """A request body that did not arrive in full within the configured time."""


# --- what is being served: the request was fine, the server cannot take it now ---------


class ServingError(AgentError):
    """A well-formed request that the serving state cannot satisfy."""


class ModelNotFoundError(ServingError, LookupError):
    """No model (or no such version of it) is being served under that name."""


class ModelNotReadyError(ServingError):
    """The model exists but cannot run requests (its session has been released)."""


class OverloadedError(ServingError):
    """A model's request queue is full; the client should retry after `retry_after_s`."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ShuttingDownError(ServingError):
    """The server is stopping and no longer takes new work."""


# --- the model runtime (onnxruntime) ---------------------------------------------------


class ModelRuntimeError(AgentError):
    """A failure inside the model runtime, not caused by a client's input."""


class ModelLoadError(ModelRuntimeError):
    """A model file that cannot be loaded: unreadable, corrupt, or not the expected hash."""

    reason = "load_error"  # the code an update event carries when this ends it


class UnsupportedModelError(ModelLoadError):
    """A model whose inputs or outputs the Open Inference Protocol cannot express."""


class InferenceError(ModelRuntimeError):
    """onnxruntime failed while running a request that passed validation."""


# --- updates -----------------------------------------------------------------------------


class UpdateError(AgentError):
    """An update step that failed on this device; `reason` is the code put in its event."""

    reason = "failed"


class StepTimeoutError(UpdateError):
    """An update step that did not finish before its deadline."""

    reason = "timeout"


class ProbationFailedError(UpdateError):
    """A new model that misbehaved while on probation after the swap."""

    reason = "probation_failed"


class ProbationLatencyError(ProbationFailedError):
    """A new model whose p99 latency was too far above the previous version's here."""

    reason = "probation_latency"


class ProbationNonFiniteError(ProbationFailedError):
    """A new model that answered NaN or infinite values during probation."""

    reason = "probation_nonfinite"


class ProbationCollapseError(ProbationFailedError):
    """A new model whose predictions collapsed onto one class, unlike the previous version's."""

    reason = "probation_collapse"


# --- model store and downloads -----------------------------------------------------------


class StoreError(AgentError):
    """The on-disk model store cannot do what was asked; `reason` is the code in its event."""

    reason = "store_error"


class InvalidDigestError(StoreError, ValueError):
    """A model or download name that is not a sha256 (64 lowercase hex), refused as a path."""

    reason = "invalid_digest"


class DiskFullError(StoreError):
    """Too little free space in the state directory for a model."""

    reason = "disk_full"


class DownloadIncompleteError(StoreError):
    """A download finalized while chunks are still missing."""

    reason = "incomplete_download"


class DownloadError(AgentError):
    """Chunks could not be fetched from the broker or the registry."""

    reason = "download_failed"


class DownloadStalledError(DownloadError):
    """No chunk was written for longer than the download's stall timeout."""

    reason = "timeout"


class DownloadFailedError(DownloadError):
    """The registry refused the download (credentials, unknown artifact, bad answer)."""

    reason = "download_failed"


# --- broker connection -----------------------------------------------------------------
# The shared MQTT adapter (edge_common/mqtt) raises these, as its own types' subclasses.


class BrokerError(AgentError, mqtt_errors.BrokerError):
    """The MQTT broker cannot be reached, refused something, or the connection ended."""


class MqttConnectError(BrokerError, mqtt_errors.MqttConnectError):
    """Connecting failed: unreachable host, TLS failure, refused CONNECT or no answer in time."""


class MqttDisconnectedError(BrokerError, mqtt_errors.MqttDisconnectedError):
    """The connection ended before an operation completed, or while messages were awaited."""


class MqttSubscribeError(BrokerError, mqtt_errors.MqttSubscribeError):
    """The broker refused a subscription (SUBACK failure code 0x80)."""


class MqttAckTimeoutError(MqttDisconnectedError, mqtt_errors.MqttAckTimeoutError):
    """No SUBACK, UNSUBACK or PUBACK came and the broker stayed silent: the link was cut."""


MQTT_ERRORS = mqtt_errors.ErrorTypes(
    broker=BrokerError,
    connect=MqttConnectError,
    disconnected=MqttDisconnectedError,
    subscribe=MqttSubscribeError,
    ack_timeout=MqttAckTimeoutError,
    settings=ConfigError,
)
