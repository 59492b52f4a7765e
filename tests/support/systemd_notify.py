"""The service manager's end of sd_notify, for tests: a datagram socket collecting messages."""

from __future__ import annotations

import socket
import time


class NotifyListener:
    """The service manager's end: a bound datagram socket collecting sd_notify messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[dict[str, str]] = []

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next message as KEY -> value; fails the test if none arrives in time."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no sd_notify message within {timeout}s") from None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(message)
        return message

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """Read messages until one sets `key`."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if key in message:
                return message

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()
