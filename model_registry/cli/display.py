"""Showing stored and device-supplied text on a terminal without letting it steer the terminal.

A device's state, an event's detail or a release label reach the CLI from outside: raw, an ESC
or CSI byte starts an escape sequence (clear the screen, move the cursor, retitle the window),
a carriage return overwrites a row, and a bidi override reorders what follows. `printable`
shows every such character as a visible escape instead, so a table row is what it says.
"""

from __future__ import annotations

import re

# C0 controls (newline and tab included: a table cell is one line), DEL, C1 controls (CSI is
# 0x9b), the line and paragraph separators, and the bidi marks, embeddings, overrides and
# isolates; ESC is among the C0s, so no escape sequence survives.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def printable(value: object) -> str:
    """`str(value)` with control, separator and bidi characters shown as `\\x..`/`\\u....`."""
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
