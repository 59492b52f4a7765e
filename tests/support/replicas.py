"""Several `model-registry serve` replicas on one PostgreSQL schema, behind HAProxy.

Set up as docs/operations.md section 11 says: `init` one home on the database, point its
`[storage] blobs` at the shared directory, copy the home for each further replica, and give
every replica the same broker. The operator's commands go through the balancer.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .broker import LOCALHOST, Broker, BrokerFactory, free_port
from .haproxy import Balancer
from .postgres import Schema, connect
from .registry import RegistryProcess, cli

DUTIES = ("maintenance", "retention", "rollouts")  # what runs on one replica at a time
_NOT_COPIED = ("serve.json", "serve.log", "serve.lock")  # what belongs to one running process


@dataclass
class ReplicaSet:
    """Registry replicas, their broker and the balancer of one test module."""

    root: Path
    broker_factory: BrokerFactory
    schema: Schema
    broker_port: int = field(default_factory=free_port)
    replicas: dict[str, RegistryProcess] = field(default_factory=dict)
    broker: Broker = field(init=False)
    balancer: Balancer = field(init=False)

    @property
    def first_home(self) -> Path:
        """The home `init` made (the others are copies of it)."""
        return self.root / "home-r1"

    @property
    def blobs(self) -> Path:
        """The blob directory every replica shares."""
        return self.root / "shared-blobs"

    def start(self, count: int = 2, chunk_size_kib: int = 256, shared: bool = True) -> None:
        """init on the schema, broker-config, mosquitto, `count` replicas, then the balancer."""
        self.init(count, chunk_size_kib=chunk_size_kib, shared=shared)
        args = ["broker-config", "--home", str(self.first_home), "--out", str(self.root / "broker")]
        cli(*args, "--port", str(self.broker_port), "--listen-host", LOCALHOST)
        self.broker = self.broker_factory.from_config(
            self.root / "broker" / "mosquitto.conf", port=self.broker_port
        )
        self.start_replicas(f"mqtt://{LOCALHOST}:{self.broker_port}")

    def init(self, count: int, *, chunk_size_kib: int, shared: bool) -> None:
        """`init` the first home on the schema and configure it; name the replicas' ports."""
        cli("init", "--home", str(self.first_home), "--database", self.schema.url)
        ports = {f"r{n}": free_port() for n in range(1, count + 1)}
        self.balancer = Balancer(self.root / "balancer", ports)
        self.configure(self.first_home, chunk_size_kib=chunk_size_kib, shared=shared)

    def start_replicas(self, mqtt_url: str) -> None:
        """Copy the first home for each further replica, start them all on `mqtt_url`, then
        the balancer (`init` first; any broker, mosquitto or a node of a cluster)."""
        for name, port in self.balancer.servers.items():
            replica_home = self.root / f"home-{name}"
            if replica_home != self.first_home:
                shutil.copytree(
                    self.first_home, replica_home, ignore=shutil.ignore_patterns(*_NOT_COPIED)
                )
            self.replicas[name] = RegistryProcess(replica_home, ("--mqtt-url", mqtt_url), port=port)
            self.replicas[name].start()
        self.balancer.start()
        for name in self.balancer.servers:
            self.balancer.wait_for_status(name, "UP")

    def configure(self, home: Path, *, chunk_size_kib: int, shared: bool) -> None:
        """The settings that differ from what `init` writes, in a home's registry.toml."""
        config = home / "registry.toml"
        text = config.read_text()
        text = text.replace("chunk_size_kib = 256", f"chunk_size_kib = {chunk_size_kib}")
        text = re.sub(r'(?m)^blobs = "blobs"$', f'blobs = "{self.blobs}"', text)
        text = re.sub(
            r"(?m)^shared_subscriptions = \w+$",
            f"shared_subscriptions = {str(shared).lower()}",
            text,
        )
        text = re.sub(r'(?m)^public_url = ""$', f'public_url = "{self.balancer.url}"', text)
        config.write_text(text)

    def set_shared_subscriptions(self, shared: bool) -> None:
        """Switch every replica's `shared_subscriptions` and restart them one after the other."""
        for name, replica in self.replicas.items():
            config = replica.home / "registry.toml"
            value = str(shared).lower()
            text = re.sub(
                r"(?m)^shared_subscriptions = \w+$",
                f"shared_subscriptions = {value}",
                config.read_text(),
            )
            config.write_text(text)
            replica.stop()
            replica.start()
            self.balancer.wait_for_status(name, "UP")

    def stop(self) -> None:
        """Stop the balancer and every replica (the broker factory stops the broker)."""
        if hasattr(self, "balancer"):  # else `init` never ran
            self.balancer.stop()
        for replica in self.replicas.values():
            replica.stop()

    def api(self) -> tuple[str, ...]:
        """The CLI arguments that reach the registry through the balancer."""
        return ("--url", self.balancer.url, "--home", str(self.first_home))

    def duty_holders(self) -> dict[str, str]:
        """Which replica holds which duty's lease now: duty -> replica name.

        Read from PostgreSQL: the advisory locks of this schema's duties, and the sessions
        holding them, which name their process (`application_name`).
        """
        pids = {
            replica.process.pid: name
            for name, replica in self.replicas.items()
            if replica.process is not None and replica.process.poll() is None
        }
        query = (
            "SELECT d.name, a.application_name FROM unnest(%s::text[]) AS d(name)"
            " JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted"
            " AND l.objid = (hashtextextended('model-registry duty ' || %s || ' ' || d.name, 0)"
            " & 4294967295)::oid"
            " AND l.classid = ((hashtextextended('model-registry duty ' || %s || ' ' || d.name, 0)"
            " >> 32) & 4294967295)::oid"
            " JOIN pg_stat_activity a ON a.pid = l.pid"
        )
        name = self.schema.name
        with connect() as conn:
            rows = conn.execute(query, (list(DUTIES), name, name)).fetchall()
        holders = {}
        for duty, application in rows:
            pid = int(str(application).rsplit(" ", 1)[-1])
            holders[str(duty)] = pids.get(pid, f"pid {pid}")
        return holders
