"""The `edge-agent` command line: `run` the agent, or `check-config` a device.toml.

Exit codes: 0 success, 1 the config (or the agent) failed with the reason in one sentence on
stderr, or a background task of the running agent died (its traceback is in the log), 2 usage
error (argparse).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from edge_agent import __version__
from edge_agent.config.loader import load_config
from edge_agent.config.preflight import Labels, check_files, check_listen
from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import ConfigError
from edge_agent.storage.lock import StateDirLock, holder_pid
from edge_agent.systemd import configure_logging
from edge_common.usage import CommandParser

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `edge-agent`."""
    parser = CommandParser(
        prog="edge-agent",
        description=(
            "Run verified ONNX models on this device: follow signed assignments over MQTT, "
            "install updates atomically, serve Open Inference Protocol v2 locally."
        ),
        epilog="docs/configuration.md describes every key of device.toml.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Every subcommand is a CommandParser too: argparse makes them of the parent's class.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
    )
    _add_run(commands)
    _add_check_config(commands)
    return parser


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="serve on TCP (overrides [server])")
    where.add_argument(
        "--socket", type=Path, metavar="PATH", help="serve on a unix socket (overrides [server])"
    )
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="overrides state_dir")


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the agent until SIGTERM or SIGINT",
        description="Serve the committed models, then follow the broker until SIGTERM or SIGINT.",
    )
    _add_config(run)
    _add_overrides(run)
    run.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        metavar="LEVEL",
        help="DEBUG, INFO (the default), WARNING or ERROR",
    )
    run.set_defaults(handler=_run)


def _add_check_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate a device.toml and print what it configures",
        description=(
            "Validate a device.toml and every file it names (root, TLS files, secrets, state "
            "directory, listen address) as `run` would, and print a summary."
        ),
    )
    _add_config(check)
    _add_overrides(check)
    check.set_defaults(handler=_check_config)


def _add_config(parser: argparse.ArgumentParser) -> None:
    """`device.toml` or `--config device.toml`: both commands take either spelling."""
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("config", type=Path, nargs="?", metavar="device.toml")
    which.add_argument(
        "--config", type=Path, dest="config_option", metavar="device.toml", help="the configuration"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `edge-agent`."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1


def _load(args: argparse.Namespace, path: Path) -> tuple[DeviceConfig, Labels]:
    """The config with the command line's overrides, and how errors name each setting."""
    config = load_config(path, state_dir=args.state_dir, listen=args.listen, socket=args.socket)
    labels = Labels(
        str(path),
        state_dir="--state-dir" if args.state_dir else "state_dir",
        listen="--listen" if args.listen else "server.listen",
        socket="--socket" if args.socket else "server.socket",
    )
    return config, labels


def _run(args: argparse.Namespace) -> int:
    # One line per event; under systemd without timestamps, with the level as a syslog priority.
    configure_logging(args.log_level)
    config, labels = _load(args, args.config_option or args.config)
    for note in check_files(config, labels):
        logging.getLogger("edge_agent").warning("%s", note)
    lock = StateDirLock(config.state_dir)
    try:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError as e:
        raise labels.setting(labels.state_dir).error(
            f"cannot lock {config.state_dir} ({e.strerror or e})"
        ) from e
    try:
        if config.server.unix_socket is None:  # the lock first: it names a second agent's pid
            check_listen(config.server.host, config.server.port, labels.setting(labels.listen))
        # Imported here so that check-config and --help do not load MQTT and onnxruntime.
        from edge_agent.agent import run_agent  # noqa: PLC0415

        return run_agent(config, labels)
    finally:
        lock.release()


def _check_config(args: argparse.Namespace) -> int:
    config, labels = _load(args, args.config_option or args.config)
    notes = check_files(config, labels)
    holder = holder_pid(config.state_dir)
    if holder is not None:
        pid = f" (pid {holder})" if holder else ""
        notes.append(f"an agent{pid} is running on {config.state_dir}; its address is in use")
    elif config.server.unix_socket is None:
        check_listen(config.server.host, config.server.port, labels.setting(labels.listen))
    print(summary(config))
    for note in notes:
        print(f"edge-agent: note: {note}", file=sys.stderr)
    return 0


def summary(config: DeviceConfig) -> str:
    """A few lines saying what a valid config sets up."""
    server = config.server
    if server.unix_socket is not None:
        listen = f"unix socket {server.unix_socket}"
    else:
        host = f"[{server.host}]" if ":" in server.host else server.host
        listen = f"http://{host}:{server.port}"
    rows = {
        "device id": config.device_id,
        "broker": f"{', '.join(config.mqtt.urls)} as {config.mqtt.username}",
        "state dir": str(config.state_dir),
        "listen": listen,
        # Said either way: an endpoint without a token answers every local process.
        "token": (
            "required: Authorization: Bearer (server.token_file), except /v2/health/*"
            if server.token
            else "none: every local process may call the endpoint"
        ),
        "follows": ", ".join(config.follow) or "every model its assignment names",
    }
    grpc = server.grpc
    if grpc.unix_socket is not None:
        rows["grpc"] = f"unix socket {grpc.unix_socket}"
    elif grpc.port is not None:
        rows["grpc"] = (
            f"[{grpc.host}]:{grpc.port}" if ":" in grpc.host else f"{grpc.host}:{grpc.port}"
        )
    lines = [f"{config.source}: OK"] + [f"  {name:<10} {value}" for name, value in rows.items()]
    return "\n".join(lines)
