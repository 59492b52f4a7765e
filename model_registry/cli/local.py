"""Commands that work on the local machine: init, serve, build-sklearn, broker-config.

Heavy modules (onnxruntime, scikit-learn, the server) are imported inside the command that
needs them, so every other command starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path

from model_registry.config import load_config
from model_registry.errors import InvalidInputError
from model_registry.home import init_home, resolve_home


def init(args: argparse.Namespace) -> int:
    """model-registry init."""
    passphrase = None
    if args.passphrase_env:
        value = os.environ.get(args.passphrase_env)
        if not value:
            raise InvalidInputError(f"${args.passphrase_env} is empty or unset")
        passphrase = value.encode()
    home = resolve_home(args.home)
    result = asyncio.run(
        init_home(
            home,
            root_keys=args.root_keys,
            root_threshold=args.root_threshold,
            passphrase=passphrase,
        )
    )
    print(f"Created the registry home {result.home}")
    print(f"Provision devices with the trust root: {result.root_file}")
    print("Root keys (move them offline, they only sign new roots):")
    for path in result.root_key_files:
        print(f"  {path}")
    print(f"Admin API token (shown once; also saved for the local CLI in {result.home}/secrets):")
    print(f"  {result.admin_token}")
    return 0


def serve(args: argparse.Namespace) -> int:
    """model-registry serve."""
    from model_registry.server import ServeOptions  # noqa: PLC0415
    from model_registry.server import serve as run_server  # noqa: PLC0415

    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = load_config(resolve_home(args.home))
    options = ServeOptions(
        listen=args.listen, mqtt_url=args.mqtt_url, embedded_broker=args.embedded_broker
    )
    asyncio.run(run_server(config, options))
    return 0


def build_sklearn(args: argparse.Namespace) -> int:
    """model-registry build-sklearn."""
    from model_registry.build import build_sklearn_file  # noqa: PLC0415

    report = build_sklearn_file(Path(args.estimator), Path(args.sample), Path(args.output))
    print(f"Wrote {args.output}: {report.summary()}")
    return 0


def broker_config(args: argparse.Namespace) -> int:
    """model-registry broker-config."""
    from model_registry.services.broker_files import write_for_home  # noqa: PLC0415

    files = asyncio.run(
        write_for_home(
            resolve_home(args.home),
            Path(args.out),
            tls=args.tls,
            port=args.port,
            listen_host=args.listen_host,
            tls_hosts=tuple(args.tls_host or ("localhost", "127.0.0.1")),
            overwrite=args.force,
            run_as_user=args.user,
            dynsec_plugin=Path(args.dynsec_plugin) if args.dynsec_plugin else None,
        )
    )
    print(f"Wrote mosquitto configuration to {Path(args.out).absolute()}:")
    for path in files:
        print(f"  {path}")
    print(f"Run it with: mosquitto -c {Path(args.out).absolute() / 'mosquitto.conf'}")
    print(
        "Devices added later (`devices add`) are admitted by the running broker at once; "
        "mosquitto reads these files only when it starts, so restart it after --force."
    )
    return 0
