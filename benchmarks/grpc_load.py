"""The gRPC column of the serving benchmark: `GRPCInferenceService/ModelInfer` under h2load.

The request is the OIP v2 gRPC message with the same row as the JSON body, in typed contents
(`fp32_contents`), framed as gRPC frames it (a flag byte and a 4-byte big-endian length). h2load
(nghttp2, C) drives it the way wrk drives the REST endpoints: one thread on the load CPU, C
connections with one stream each, a fixed duration; it writes one line per request, from which
the p50 and p99 are taken. h2load sees HTTP statuses only (gRPC errors travel in trailers), so
every server answers one request through a real gRPC client first, and the agent's own request
counter by status is compared before and after each run.
"""

from __future__ import annotations

import re
import statistics
import struct
import subprocess
from pathlib import Path
from typing import Any, Protocol

from benchmarks.common import LOAD_CPUS, pinned

SERVICE_PATH = "/inference.GRPCInferenceService/ModelInfer"


class ServedRow(Protocol):
    """What the message needs of a served model (serving.Served)."""

    key: str
    name: str
    row: list[float]
    input_name: str


def request_message(served: ServedRow) -> bytes:
    """The serialized ModelInferRequest for one row."""
    from edge_agent.server.grpc import inference_pb2 as pb  # noqa: PLC0415 - the grpc extra

    tensor = pb.ModelInferRequest.InferInputTensor(
        name=served.input_name, datatype="FP32", shape=[1, len(served.row)],
        contents=pb.InferTensorContents(fp32_contents=served.row),
    )  # fmt: skip
    request = pb.ModelInferRequest(model_name=served.name, inputs=[tensor])
    message: bytes = request.SerializeToString()
    return message


def write_body(served: ServedRow, directory: Path) -> Path:
    """The request as one gRPC frame, for h2load's -d."""
    message = request_message(served)
    path = directory / f"{served.key}.grpc"
    path.write_bytes(b"\x00" + struct.pack(">I", len(message)) + message)
    return path


class Checker:
    """ModelInfer through grpcio on one channel, kept for the warm-up requests that follow."""

    def __init__(self, port: int, served: ServedRow) -> None:
        self.port = port
        self.message = request_message(served)
        self._channel: Any = None
        self._call: Any = None

    def check(self) -> str:
        """One request: the server must answer with outputs."""
        import grpc  # noqa: PLC0415 - the grpc extra
        from edge_agent.server.grpc import inference_pb2 as pb  # noqa: PLC0415

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
            grpc.channel_ready_future(self._channel).result(timeout=30)
            self._call = self._channel.unary_unary(SERVICE_PATH)
        response = pb.ModelInferResponse.FromString(self._call(self.message, timeout=30))
        if not response.outputs:
            raise RuntimeError(f"gRPC ModelInfer on {self.port} answered no outputs")
        return f"{len(response.outputs)} outputs ({', '.join(o.name for o in response.outputs)})"

    def close(self) -> None:
        """Close the channel (before the load: h2load gets the server to itself)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def h2load(port: int, body: Path, *, concurrency: int, seconds: int, out: Path) -> dict[str, Any]:
    """One h2load run on the load CPU; the summary in wrk's form (serving._entry reads it)."""
    out.unlink(missing_ok=True)
    argv = ["h2load", "-t1", f"-c{concurrency}", "-m1", f"-D{seconds}", "-d", str(body)]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    argv += ["--log-file", str(out), f"http://127.0.0.1:{port}{SERVICE_PATH}"]
    result = subprocess.run(
        pinned(argv, LOAD_CPUS), capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"h2load failed ({result.returncode}): {result.stderr}{result.stdout}")
    return summary(result.stdout, out)


def summary(stdout: str, log_file: Path) -> dict[str, Any]:
    """requests, duration, latency percentiles and errors from h2load's output and log."""
    finished = re.search(r"finished in ([\d.]+)(ms|s),", stdout)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        stdout,
    )
    if finished is None or counts is None:
        raise RuntimeError(f"cannot read h2load's summary:\n{stdout}")
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    latencies = []
    for line in log_file.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and fields[1] == "200":
            latencies.append(int(fields[2]))
    latencies.sort()
    succeeded, failed, errored, timeout = (int(counts.group(i)) for i in (4, 5, 6, 7))

    def pct(q: float) -> int:
        if not latencies:
            return 0
        return latencies[min(len(latencies) - 1, round(q * (len(latencies) - 1)))]

    return {
        "requests": succeeded,
        "duration_us": int(seconds * 1e6),
        "errors": {"failed": failed, "errored": errored, "timeout": timeout},
        "latency_us": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99),
                       "max": latencies[-1] if latencies else 0,
                       "mean": statistics.fmean(latencies) if latencies else 0.0},
    }  # fmt: skip
