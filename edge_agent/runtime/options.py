"""How onnxruntime sessions are created and how many run at once (TOML `[runtime]`)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import ConfigError

CPU_PROVIDER = "CPUExecutionProvider"
MAX_THREADS = 256


@dataclass(frozen=True)
class RuntimeOptions:
    """onnxruntime session and thread-pool settings, validated on construction."""

    # Threads one session.run may use inside an operator; 0 lets onnxruntime pick (all cores).
    intra_op_threads: int = 1
    # Threads running independent graph nodes in parallel; 0 lets onnxruntime pick.
    inter_op_threads: int = 1
    # session.run calls in flight at once across all models: the size of the executor.
    inference_workers: int = 1
    # Tried in order; the CPU provider is always appended as the fallback.
    execution_providers: tuple[str, ...] = (CPU_PROVIDER,)

    def __post_init__(self) -> None:
        _check_count("runtime.intra_op_threads", self.intra_op_threads, minimum=0)
        _check_count("runtime.inter_op_threads", self.inter_op_threads, minimum=0)
        _check_count("runtime.inference_workers", self.inference_workers, minimum=1)
        providers = self.execution_providers
        if isinstance(providers, str) or not isinstance(providers, tuple):
            raise ConfigError("runtime.execution_providers: expected a tuple of provider names")
        for provider in providers:
            if not isinstance(provider, str) or not provider.endswith("ExecutionProvider"):
                raise ConfigError(
                    f"runtime.execution_providers: {provider!r} is not an onnxruntime provider "
                    "name (for example 'CPUExecutionProvider')"
                )

    @property
    def providers(self) -> tuple[str, ...]:
        """The providers to request, CPU last as the fallback."""
        if CPU_PROVIDER in self.execution_providers:
            return self.execution_providers
        return (*self.execution_providers, CPU_PROVIDER)


def _check_count(key: str, value: object, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not minimum <= value <= MAX_THREADS:
        raise ConfigError(f"{key}: must be between {minimum} and {MAX_THREADS}, got {value}")
