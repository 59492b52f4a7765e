"""The argument parser of `model-registry`: the command-line contract in one place."""

from __future__ import annotations

import argparse
import math
from typing import cast

from edge_common.usage import CommandParser
from model_registry import __version__
from model_registry.cli.experiment_parser import add_experiment_commands
from model_registry.cli.flags import api_flags, home_flag, json_flag, target_flags
from model_registry.cli.rollout_parser import add_rollout_commands


def build_parser() -> argparse.ArgumentParser:
    """Return the parser with every subcommand."""
    parser = CommandParser(
        prog="model-registry",
        description="Version, quantize, sign and deploy ONNX models to edge devices over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Every subcommand is a CommandParser too: argparse makes them of the parent's class.
    commands = cast(
        "argparse._SubParsersAction[argparse.ArgumentParser]",
        parser.add_subparsers(dest="command", metavar="COMMAND", required=True),
    )
    _local_commands(commands)
    _model_commands(commands)
    add_rollout_commands(commands)
    _fleet_commands(commands)
    _key_commands(commands)
    add_experiment_commands(commands)
    return parser


def _local_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser(
        "init", help="create a registry home: keys, root v1, database, admin token"
    )
    home_flag(init)
    init.add_argument("--root-keys", type=int, default=1, help="number of root keys (default 1)")
    init.add_argument(
        "--root-threshold", type=int, default=1, help="root signatures required (default 1)"
    )
    init.add_argument(
        "--passphrase-env", metavar="VAR", help="encrypt root keys with the passphrase in $VAR"
    )
    init.add_argument(
        "--database",
        metavar="URL",
        default="registry.db",
        help="storage.database: a postgresql:// URL of an empty database, or a SQLite file "
        "in the home (default registry.db)",
    )

    serve = commands.add_parser("serve", help="run the API and the MQTT side")
    _serve_options(serve)
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    check = commands.add_parser(
        "check-config",
        help="check registry.toml and every file it names, as serve would, and summarize",
    )
    _serve_options(check)

    build = commands.add_parser(
        "build-sklearn", help="convert a fitted scikit-learn estimator to ONNX"
    )
    build.add_argument("estimator", metavar="ESTIMATOR.joblib")
    build.add_argument("--sample", required=True, metavar="DATA.npz", help="rows with array X")
    build.add_argument("-o", "--output", required=True, metavar="OUT.onnx")

    broker_config = commands.add_parser(
        "broker-config", help="write mosquitto config, credentials and access rules"
    )
    home_flag(broker_config)
    broker_config.add_argument("--out", required=True, metavar="DIR")
    broker_config.add_argument(
        "--tls", action="store_true", help="TLS listener with a generated CA"
    )
    broker_config.add_argument(
        "--port", type=int, help="listener port (default 1883, 8883 with --tls)"
    )
    broker_config.add_argument("--listen-host", default="0.0.0.0", help="listener address")  # noqa: S104
    broker_config.add_argument(
        "--tls-host", action="append", help="name or IP in the server certificate"
    )
    broker_config.add_argument("--force", action="store_true", help="overwrite existing files")
    broker_config.add_argument(
        "--user", help="account mosquitto drops root privileges to (default: the current user)"
    )
    broker_config.add_argument(
        "--dynsec-plugin",
        metavar="PATH",
        help="mosquitto_dynamic_security.so on the broker host (default: the one installed here)",
    )


def _serve_options(parser: argparse.ArgumentParser) -> None:
    home_flag(parser)
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="API address (default from registry.toml)"
    )
    broker = parser.add_mutually_exclusive_group()
    broker.add_argument("--mqtt-url", metavar="URL", help="external broker, mqtt:// or mqtts://")
    broker.add_argument(
        "--embedded-broker", metavar="HOST:PORT", help="start the embedded broker here"
    )


def _model_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = commands.add_parser("push", help="upload an ONNX model as the next version")
    api_flags(push)
    push.add_argument("file", metavar="FILE.onnx")
    push.add_argument("--name", required=True)
    push.add_argument("--quantize", choices=["int8"])
    push.add_argument(
        "--eval", metavar="DATA.npz", help="evaluation set with X and y (accuracy gate)"
    )
    push.add_argument(
        "--calibration", metavar="DATA.npz", help="rows X for static QDQ quantization"
    )
    push.add_argument(
        "--reference",
        metavar="DATA.npz",
        help="rows X the drift profile is made of (default: the --eval rows)",
    )
    push.add_argument("--label", default="")
    push.add_argument(
        "--accuracy-limit", type=float, default=1.0, help="largest allowed drop, in points"
    )
    push.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="make a new version even if an earlier one was built from the same file",
    )
    _champion_gate(push)
    json_flag(push)

    models = commands.add_parser("models", help="list models")
    api_flags(models)
    json_flag(models)

    versions = commands.add_parser("versions", help="list the versions of a model")
    api_flags(versions)
    versions.add_argument("name")
    json_flag(versions)

    _drift_command(commands)

    deploy = commands.add_parser("deploy", help="deploy a version to a group or devices")
    api_flags(deploy)
    deploy.add_argument("name")
    deploy.add_argument("version", type=int)
    target_flags(deploy)
    _wait(deploy)
    _force(deploy, "deploy")
    _idempotency_key(deploy)
    json_flag(deploy)

    rollback = commands.add_parser("rollback", help="deploy the previous release a target ran")
    api_flags(rollback)
    rollback.add_argument("name")
    target_flags(rollback)
    _wait(rollback)
    _force(rollback, "rollback")
    _idempotency_key(rollback)
    json_flag(rollback)

    listing = commands.add_parser("deployments", help="list deployments and follow one")
    deployment_commands = listing.add_subparsers(
        dest="deployments_command", metavar="COMMAND", required=True
    )
    many = deployment_commands.add_parser("list", help="deployments, newest first")
    api_flags(many)
    many.add_argument("--model", help="only this model's")
    json_flag(many)
    one = deployment_commands.add_parser("show", help="where each device of a deployment stands")
    api_flags(one)
    one.add_argument("id", type=int, metavar="ID")
    _wait(one)
    json_flag(one)


def _drift_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    drift = commands.add_parser(
        "drift", help="how far inputs and predictions moved from the release's profile"
    )
    api_flags(drift)
    drift.add_argument("name")
    drift.add_argument("--device", metavar="ID", help="only this device's rows")
    drift.add_argument(
        "--window", metavar="DURATION", help="30m, 1h, 2d... (default [drift] window_s)"
    )
    json_flag(drift)


def _champion_gate(push: argparse.ArgumentParser) -> None:
    push.add_argument(
        "--max-regression",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="with --eval: refuse a version this many points worse than the champion (default 1)",
    )
    push.add_argument(
        "--min-accuracy",
        type=float,
        metavar="POINTS",
        help="with --eval: refuse a version scoring below this (accuracy %%, or R^2 x 100)",
    )
    push.add_argument(
        "--baseline",
        type=int,
        metavar="VERSION",
        help="the champion to compare with (default: the latest version)",
    )
    push.add_argument(
        "--force", action="store_true", help="push even when the champion gate refuses it"
    )


def _wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="follow the deployment until every device is done or its deadline passed",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        metavar="SECONDS",
        help="wait at most this long (implies --wait; default: until the deadline)",
    )


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above zero (a usage error otherwise)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value


def _idempotency_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="send this Idempotency-Key (default: a new UUID); the same key never deploys twice",
    )


def _fleet_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devices = commands.add_parser("devices", help="provision, list, show, move and remove devices")
    device_commands = devices.add_subparsers(
        dest="devices_command", metavar="COMMAND", required=True
    )
    add = device_commands.add_parser("add", help="register a device and write its bundle")
    api_flags(add)
    add.add_argument("device_id", metavar="ID")
    add.add_argument("--group", default="default")
    add.add_argument("--out", required=True, metavar="DIR", help="bundle directory to create")
    add.add_argument(
        "--mqtt-url", metavar="URL", help="broker URL for the device (default from the registry)"
    )
    json_flag(add)
    listing = device_commands.add_parser("list", help="list devices")
    api_flags(listing)
    listing.add_argument("--group")
    json_flag(listing)
    _device_commands(device_commands)

    token = commands.add_parser("token", help="manage API tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = token_commands.add_parser("create", help="create a token (printed once)")
    api_flags(create)
    create.add_argument("--role", required=True, choices=["viewer", "publisher", "admin"])
    create.add_argument("--name")
    json_flag(create)
    tokens = token_commands.add_parser("list", help="list tokens (never their secrets)")
    api_flags(tokens)
    json_flag(tokens)
    revoke = token_commands.add_parser("revoke", help="revoke a token: it is refused from now on")
    api_flags(revoke)
    revoke.add_argument("id", type=int, metavar="ID", help="the token's id (see token list)")
    json_flag(revoke)


def _device_commands(device_commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    show = device_commands.add_parser(
        "show", help="one device: its models, recent events and telemetry"
    )
    api_flags(show)
    show.add_argument("device_id", metavar="ID")
    show.add_argument("--events", type=int, default=10, metavar="N", help="recent events (10)")
    show.add_argument("--telemetry", type=int, default=5, metavar="N", help="telemetry reports (5)")
    json_flag(show)
    move = device_commands.add_parser(
        "move", help="put a device in another group (its assignment stays until a deploy)"
    )
    api_flags(move)
    move.add_argument("device_id", metavar="ID")
    move.add_argument("--group", required=True, help="the new group")
    json_flag(move)
    remove = device_commands.add_parser(
        "remove", help="revoke a device's broker login and delete it from the registry"
    )
    api_flags(remove)
    remove.add_argument("device_id", metavar="ID")
    json_flag(remove)


def _key_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="rotate the release key or the root keys")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    release = key_commands.add_parser(
        "rotate-release",
        help="new release key: sign root N+1 naming it (stop serve first)",
    )
    root = key_commands.add_parser(
        "rotate-root",
        help="new root keys: sign root N+1 with the old and the new ones (stop serve first)",
    )
    for command in (release, root):
        home_flag(command)
        command.add_argument(
            "--root-key",
            action="extend",
            nargs="+",
            metavar="FILE",
            required=command is root,
            help="a current root key file; a threshold of them is needed"
            + (" (default: the home's keys/root/*.pem)" if command is release else ""),
        )
        command.add_argument(
            "--passphrase-env",
            metavar="VAR",
            help="the root keys' passphrase is in $VAR"
            + (" (the new root keys are encrypted with it)" if command is root else ""),
        )
    root.add_argument(
        "--new-root-keys",
        type=int,
        metavar="N",
        help="number of new root keys (default: as many as now)",
    )
    root.add_argument(
        "--new-threshold",
        type=int,
        metavar="K",
        help="root signatures the new root requires (default: as now, at most N)",
    )


def _force(command: argparse.ArgumentParser, action: str) -> None:
    command.add_argument(
        "--force", action="store_true",
        help=f"stop a running experiment this {action} reaches (refused otherwise)",
    )  # fmt: skip
