"""The scenario of `make arm64-check`, run by scripts/arm64-check.sh with the project's venv.

A registry on this machine (`model-registry serve` with its embedded MQTT broker) builds,
quantizes, signs and deploys a scikit-learn model; an edge agent running as aarch64 code under
qemu-user installs it over MQTT (signature, chunk hashes, self-test) and answers an Open
Inference Protocol request, whose answer is compared with onnxruntime on this machine.
Exits 0 when all of that happened, 1 with the logs' tails otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_common.processes import free_port

PROJECT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCALHOST = "127.0.0.1"
MODEL, GROUP, DEVICE = "arm64-demo", "arm64", "arm64-emulated"
FEATURES = 16
TOLERANCE = 1e-3


class CheckFailedError(Exception):
    """A step of the check did not happen."""


def step(message: str, started: float) -> None:
    """Print a progress line."""
    print(f"-- {message} ({time.monotonic() - started:.1f}s)", flush=True)


def registry(*args: str) -> str:
    """Run `model-registry ARGS` and return its stdout."""
    argv = [str(BIN / "model-registry"), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise CheckFailedError(f"model-registry {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def http(url: str, body: Any = None, timeout: float = 30) -> Any:
    """GET (or POST `body` as JSON) and return the decoded JSON answer (True if empty)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - http://
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        answer = response.read()
    return json.loads(answer) if answer else True


def wait_for(what: str, probe: Any, timeout: float, process: subprocess.Popen[bytes]) -> Any:
    """Poll `probe()` until it returns something truthy; fail if `process` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CheckFailedError(f"{what}: the process exited with {process.returncode}")
        try:
            result = probe()
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise CheckFailedError(f"{what}: not within {timeout:.0f}s")


def build_model(work: Path) -> tuple[Path, Path, Any]:
    """A small MLP classifier as ONNX, with its evaluation set and some rows to ask about."""
    import joblib  # noqa: PLC0415 - the registry's dependencies, present in the project venv
    import numpy as np  # noqa: PLC0415
    from sklearn.datasets import make_classification  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    features, labels = make_classification(
        n_samples=600, n_features=FEATURES, n_informative=8, n_classes=3, random_state=3
    )
    features = features.astype(np.float32)
    classifier = MLPClassifier(hidden_layer_sizes=(32,), max_iter=300, random_state=3)
    classifier.fit(features[:450], labels[:450])
    joblib.dump(classifier, work / "model.joblib")
    np.savez(work / "sample.npz", X=features[:100])
    np.savez(work / "eval.npz", X=features[450:], y=labels[450:])
    registry(
        "build-sklearn", str(work / "model.joblib"), "--sample", str(work / "sample.npz"),
        "-o", str(work / "model.onnx"),
    )  # fmt: skip
    return work / "model.onnx", work / "eval.npz", features[450:454]


def start_registry(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`model-registry serve` with its embedded broker; return the process and the API URL."""
    api, mqtt = free_port(), free_port()
    argv = [str(BIN / "model-registry"), "serve", "--home", str(home)]
    argv += ["--listen", f"{LOCALHOST}:{api}", "--embedded-broker", f"{LOCALHOST}:{mqtt}"]
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
    url = f"http://{LOCALHOST}:{api}"
    wait_for("the registry's API", lambda: http(f"{url}/healthz"), 120, process)
    return process, url


def start_agent(args: argparse.Namespace, bundle: Path, state: Path, log: Path) -> Any:
    """The agent as aarch64 code: qemu-user runs Debian's arm64 python3.11 on the unpacked root."""
    port = free_port()
    python = args.root / "usr" / "bin" / "python3.11"
    argv = [args.qemu, "-L", str(args.root), str(python), "-m", "edge_agent", "run"]
    argv += ["--config", str(bundle / "device.toml"), "--state-dir", str(state)]
    argv += ["--listen", f"{LOCALHOST}:{port}"]
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONHOME"}}
    env |= {
        "PYTHONPATH": f"{args.site}{os.pathsep}{PROJECT}",
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            argv, stdout=out, stderr=subprocess.STDOUT, env=env
        )
    return process, f"http://{LOCALHOST}:{port}"


def host_outputs(model: Path, input_name: str, rows: Any) -> dict[str, Any]:
    """What onnxruntime on this x86 machine computes for `rows` with the installed file."""
    import onnxruntime as ort  # noqa: PLC0415

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {input_name: rows}), strict=True))


def compare(answer: dict[str, Any], expected: dict[str, Any]) -> float:
    """The largest difference between the agent's outputs and onnxruntime's on this machine."""
    import numpy as np  # noqa: PLC0415

    worst = 0.0
    for output in answer["outputs"]:
        want = np.asarray(expected[output["name"]]).reshape(-1).astype(np.float64)
        got = np.asarray(output["data"], dtype=np.float64).reshape(-1)
        worst = max(worst, float(np.max(np.abs(got - want))) if want.size else 0.0)
    return worst


def scenario(args: argparse.Namespace, started: float, procs: dict[str, Any]) -> None:
    """Everything the check shows, in order; raises CheckFailedError at the first failure."""
    work = args.work
    home, bundle, state = work / "registry-home", work / "bundle", work / "state"
    registry("init", "--home", str(home))
    procs["registry"], api = start_registry(home, work / "registry.log")
    step(f"registry serving on {api} with its embedded MQTT broker", started)
    model, eval_set, rows = build_model(work)
    release = json.loads(
        registry("push", str(model), "--name", MODEL, "--quantize", "int8",
                 "--eval", str(eval_set), "--home", str(home), "--json")
    )  # fmt: skip
    version = int(release["version"])
    build = release.get("build", {})
    step(f"pushed and signed {MODEL} v{version}: {build.get('quantization_reason')}", started)
    registry("devices", "add", DEVICE, "--group", GROUP, "--out", str(bundle), "--home", str(home))
    procs["agent"], agent = start_agent(args, bundle, state, work / "agent.log")
    wait_for("the emulated agent's endpoint", lambda: http(f"{agent}/v2/health/live"),
             args.timeout, procs["agent"])  # fmt: skip
    step(f"emulated aarch64 agent serving on {agent}", started)
    registry("deploy", MODEL, str(version), "--group", GROUP, "--home", str(home))
    step(f"deployed {MODEL} v{version} to group {GROUP}", started)

    def serving() -> Any:
        metadata = http(f"{agent}/v2/models/{MODEL}")
        return metadata if metadata["versions"] == [str(version)] else None

    metadata = wait_for(f"{MODEL} v{version} on the emulated agent", serving, args.timeout,
                        procs["agent"])  # fmt: skip
    step(f"the emulated agent verified, self-tested and serves {MODEL} v{version}", started)
    input_name = metadata["inputs"][0]["name"]
    body = {"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(rows.shape),
                        "data": rows.tolist()}]}  # fmt: skip
    answer = http(f"{agent}/v2/models/{MODEL}/infer", body)
    installed = next((state / "models").glob("*.onnx"))
    worst = compare(answer, host_outputs(installed, input_name, rows))
    print(json.dumps(answer["outputs"], indent=None)[:400])
    if worst > TOLERANCE:
        raise CheckFailedError(f"aarch64 and x86 outputs differ by {worst} (> {TOLERANCE})")
    step(f"infer answered; largest difference from x86 onnxruntime {worst:.2e}", started)
    status = http(f"{agent}/v1/status")
    print(json.dumps({"updates": status.get("updates"), "trust": status.get("trust")}))
    procs["agent"].send_signal(signal.SIGTERM)
    code = procs["agent"].wait(timeout=120)
    if code != 0:
        raise CheckFailedError(f"the emulated agent exited {code} after SIGTERM")
    step("the emulated agent drained and exited 0 on SIGTERM", started)


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    if not path.exists():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def main() -> int:
    """Run the scenario and report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", default="qemu-aarch64-static")
    parser.add_argument("--root", type=Path, required=True, help="unpacked arm64 Debian root")
    parser.add_argument("--site", type=Path, required=True, help="aarch64 wheels (--target)")
    parser.add_argument("--work", type=Path, required=True, help="emptied, then used")
    parser.add_argument("--timeout", type=float, default=600, help="per emulated step, seconds")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.monotonic()
    procs: dict[str, Any] = {}
    try:
        scenario(args, started, procs)
    except (CheckFailedError, subprocess.TimeoutExpired) as e:
        print(f"arm64-check FAILED: {e}", file=sys.stderr)
        for name in ("agent", "registry"):
            print(f"--- {name}.log ---\n{tail(args.work / f'{name}.log')}", file=sys.stderr)
        return 1
    finally:
        for process in procs.values():
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    print(f"arm64-check: OK in {time.monotonic() - started:.0f}s (logs in {args.work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
