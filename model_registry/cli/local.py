"""Commands that work on the local machine: init, serve, build-sklearn, broker-config.

Heavy modules (onnxruntime, scikit-learn, the server) are imported inside the command that
needs them, so every other command starts quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from model_registry.config import (
    CONFIG_NAME,
    RegistryConfig,
    ServeOptions,
    load_config,
    parse_host_port,
)
from model_registry.errors import InvalidInputError
from model_registry.home import init_home, resolve_home
from model_registry.lock import HomeLock, holder_pid
from model_registry.preflight import check_home, check_listen, setting, sqlite_path
from model_registry.storage.postgres import redact
from model_registry.workdir import empty_workdir

log = logging.getLogger(__name__)


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
            database=args.database,
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
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Every path is made absolute first: the home is resolved here, the config's paths against it.
    config, options = _config_and_options(args)
    for note in check_home(config):
        log.warning("%s", note)
    # SQLite only: replicas on a database server must all be able to start (model_registry/lock.py).
    lock = HomeLock(config.home) if sqlite_path(config) is not None else None
    if lock is not None:
        lock.acquire()
    try:
        _check_addresses(config, options)
        from model_registry.server import serve as run_server  # noqa: PLC0415 - heavy

        with empty_workdir():
            return asyncio.run(run_server(config, options))
    finally:
        if lock is not None:
            lock.release()


def check_config(args: argparse.Namespace) -> int:
    """model-registry check-config."""
    config, options = _config_and_options(args)
    notes = check_home(config)
    holder = holder_pid(config.home) if sqlite_path(config) is not None else None
    if holder is not None:
        pid = f" (pid {holder})" if holder else ""
        notes.append(f"a serve{pid} is running on {config.home}; its addresses are in use")
    else:
        _check_addresses(config, options)
    print(_summary(config, options))
    for note in notes:
        print(f"model-registry check-config: note: {note}", file=sys.stderr)
    return 0


def _config_and_options(args: argparse.Namespace) -> tuple[RegistryConfig, ServeOptions]:
    config = load_config(resolve_home(args.home))
    return config, ServeOptions(
        listen=args.listen, mqtt_url=args.mqtt_url, embedded_broker=args.embedded_broker
    )


def _check_addresses(config: RegistryConfig, options: ServeOptions) -> None:
    """The API's and the embedded broker's addresses must be free (a taken one fails at once)."""
    for address in (options.api_listen(config), options.embedded_listen(config)):
        if address is not None:
            listen, key = address
            host, port = parse_host_port(listen, key)
            check_listen(host, port, setting(config, key))


def _summary(config: RegistryConfig, options: ServeOptions) -> str:
    embedded = options.embedded_listen(config)
    rows = {
        "api": f"http://{options.api_listen(config)[0]}",
        "broker": f"embedded on {embedded[0]}" if embedded else options.mqtt_url or config.mqtt.url,
        "database": redact(config.database_location),  # a server's URL without its password
        "blobs": str(config.path(config.storage.blobs)),
        "root": str(config.path(config.signing.root_file)),
    }
    lines = [f"{config.home / CONFIG_NAME}: OK"]
    return "\n".join(lines + [f"  {name:<9} {value}" for name, value in rows.items()])


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
