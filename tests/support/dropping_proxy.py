"""A TCP proxy that lets requests through and loses answers: a link that drops at the worst time.

The server gets every request whole and answers it; for the first `drop` connections the proxy
then closes the client's side without passing the answer on, so the client cannot tell whether
its request took effect.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType
from typing import Self

from .broker import LOCALHOST


class DroppingProxy:
    """Forwards to `port` on loopback; answers of the first `drop` connections are lost."""

    def __init__(self, port: int, *, drop: int) -> None:
        self._target = (LOCALHOST, port)
        self.drop = drop
        self.connections = 0
        self.dropped = 0
        self._server = socket.create_server((LOCALHOST, 0))
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The proxy's http:// URL."""
        return f"http://{LOCALHOST}:{self._server.getsockname()[1]}"

    def __enter__(self) -> Self:
        self._spawn(self._accept)
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=10)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                lose = self.dropped < self.drop
                self.dropped += lose
            upstream = socket.create_connection(self._target, timeout=30)
            self._spawn(self._pump, client, upstream, False)
            self._spawn(self._pump, upstream, client, lose)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, lose: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if lose:
                    # The server answered: the request is done. The client never hears of it.
                    sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    break
                sink.sendall(data)
        for side in (source, sink):  # shutdown, unlike close, wakes the other pump's recv
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)
            side.close()
