"""TCP addresses a server listens on: `HOST:PORT` read, and whether it can listen there."""

from __future__ import annotations

import errno
import socket


def listen_problem(host: str, port: int) -> str | None:
    """Bind and close host:port as a server would; say why it cannot listen, None if it can.

    A taken port then fails at once with a sentence, not deep inside the server's start-up.
    """
    try:
        addresses = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        return f"cannot resolve {host!r} ({e.strerror})"
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                return listen_error(host, port, e)
    return None


def listen_error(host: str, port: int, error: OSError) -> str:
    """Why a server cannot listen on host:port, in words."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        return f"{shown} is already in use by another process; stop it or choose a free port"
    return f"cannot listen on {shown} ({error.strerror or error})"


def split_host_port(text: str) -> tuple[str, int] | None:
    """Split HOST:PORT or [IPV6]:PORT; None if `text` is neither (both services' config)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:  # an IPv6 address needs brackets, or its last group reads as the port
        return None
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65_535:
        return None
    return host, int(port)
