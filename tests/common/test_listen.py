"""HOST:PORT as both services read it (edge_common.listen.split_host_port)."""

from __future__ import annotations

import pytest

from edge_common.listen import split_host_port


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:8700", ("::1", 8700)),
        ("::1:8700", None),  # without brackets the address's last group would read as the port
        ("host", None),
        ("host:", None),
        (":80", None),
        ("[]:80", None),
        ("host:65536", None),
        ("host:-1", None),
        ("host:\u0663", None),  # a digit, but not an ASCII one
    ],
)
def test_split_host_port(text: str, expected: tuple[str, int] | None) -> None:
    assert split_host_port(text) == expected
