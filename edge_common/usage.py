"""Usage errors that help: the subcommand's own usage, and the close name of a mistyped word.

argparse leaves unknown options of a subcommand to the top-level parser, which prints the
top-level usage; and it lists every choice of a mistyped one without saying which was meant.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

_NEGATIVE_NUMBER = re.compile(r"^-\d")


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands report their own unknown arguments."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse, and refuse what a command without subcommands does not know."""
        self._words = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            self.error(unrecognized(extras, self._option_string_actions))
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        """Print the usage and `message`, adding the close name of a mistyped option."""
        words: list[str] = getattr(self, "_words", [])
        unknown = [word for word in options_in(words) if not self._knows(word)]
        if unknown and self._subparsers is None and "unrecognized arguments" not in message:
            message += "; " + unrecognized(unknown, self._option_string_actions)
        super().error(message)

    def _knows(self, word: str) -> bool:
        # argparse also takes an unambiguous prefix of a long option (allow_abbrev).
        name = word.split("=", 1)[0]
        return name in self._option_string_actions or any(
            option.startswith(name) for option in self._option_string_actions if name[:2] == "--"
        )

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(choice) for choice in action.choices)
            hint = did_you_mean(str(value), (str(choice) for choice in action.choices))
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {choices})"
            )


def options_in(words: Iterable[str]) -> list[str]:
    """The words that look like options, up to a `--` (after it every word is positional)."""
    found = []
    for word in words:
        if word == "--":
            break
        if word.startswith("-") and word != "-" and not _NEGATIVE_NUMBER.match(word):
            found.append(word)
    return found


def unrecognized(extras: list[str], options: Iterable[str]) -> str:
    """`unrecognized arguments: --quantise (did you mean --quantize?)`."""
    known = sorted(set(options))
    flags = set(options_in(extras))
    words = [
        word + did_you_mean(word.split("=", 1)[0], known) if word in flags else word
        for word in extras
    ]
    return f"unrecognized arguments: {' '.join(words)}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean X?)` for the closest candidate, or "" when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
