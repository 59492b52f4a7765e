"""The `model-registry` command line: parse, dispatch, and map failures to exit codes.

Exit codes: 0 success, 1 the operation failed, 2 usage error, 130 interrupted (Ctrl-C).
Errors go to stderr as one plain sentence; `--json` prints machine-readable output on stdout.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from model_registry.cli import deployments, drift, experiments, fleet, keys, local, remote, rollouts
from model_registry.cli.display import printable
from model_registry.cli.follow import EXIT_INTERRUPTED, FollowInterruptedError
from model_registry.cli.parser import build_parser
from model_registry.errors import RegistryError

EXIT_FAILED = 1  # argparse itself exits with 2 on usage errors

Command = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, Command] = {
    "init": local.init,
    "serve": local.serve,
    "check-config": local.check_config,
    "build-sklearn": local.build_sklearn,
    "broker-config": local.broker_config,
    "push": remote.push,
    "models": remote.models,
    "versions": remote.versions,
    "drift": drift.drift,
    "deploy": deployments.deploy,
    "rollback": deployments.rollback,
    "deployments list": deployments.deployments_list,
    "deployments show": deployments.deployments_show,
    "rollout start": rollouts.start,
    "rollout status": rollouts.status,
    "rollout list": rollouts.listing,
    "rollout pause": rollouts.pause,
    "rollout resume": rollouts.resume,
    "rollout abort": rollouts.abort,
    "devices add": remote.devices_add,
    "devices list": remote.devices_list,
    "devices show": fleet.devices_show,
    "devices move": fleet.devices_move,
    "devices remove": fleet.devices_remove,
    "token create": remote.token_create,
    "token list": fleet.token_list,
    "token revoke": fleet.token_revoke,
    "keys rotate-release": keys.rotate_release,
    "keys rotate-root": keys.rotate_root,
    "experiment start": experiments.start,
    "experiment list": experiments.listing,
    "experiment status": experiments.status,
    "experiment promote": experiments.promote,
    "experiment stop": experiments.stop,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `model-registry`."""
    args = build_parser().parse_args(argv)
    name = " ".join(
        part
        for part in (
            args.command,
            getattr(args, "devices_command", None),
            getattr(args, "deployments_command", None),
            getattr(args, "rollout_command", None),
            getattr(args, "token_command", None),
            getattr(args, "keys_command", None),
            getattr(args, "experiment_command", None),
        )
        if part
    )
    try:
        return COMMANDS[name](args)
    except FollowInterruptedError as e:  # Ctrl-C on --wait: say what goes on without us
        print(f"model-registry {name}: {printable(e)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"model-registry {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): what was asked of the registry is done; say nothing,
        # and point stdout at /dev/null so the interpreter's last flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (RegistryError, OSError) as e:
        # The sentence may quote the registry, and through it what a device reported.
        print(f"model-registry {name}: {printable(_sentence(e))}", file=sys.stderr)
        return EXIT_FAILED


def _sentence(error: Exception) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.strerror}: {error.filename}"
    return str(error)
