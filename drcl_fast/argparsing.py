"""An argparse parser whose commands report their own misspelt flags, with the closest known one.

Plain argparse leaves a subcommand's unknown arguments to the top-level parser, which
prints the top-level usage and no hint (`drcl-fast: error: unrecognized arguments:
--epocs 3`). Here the subcommand's parser reports them, with its own usage line:
`drcl-fast train: error: unrecognized arguments: --epocs 3; did you mean --epochs?`.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Sequence


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser; unknown arguments are reported by the command they were given to."""

    def parse_args(self, args: Sequence[str] | None = None,   # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            reject(self._command_parser(parsed), unknown)
        return parsed

    def _command_parser(self, parsed: argparse.Namespace) -> "argparse.ArgumentParser":
        """The parser of the subcommand in `parsed` (this one if it has none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                if chosen in action.choices:
                    return action.choices[chosen]
        return self


def closest_flag(parser: argparse.ArgumentParser, given: str) -> str | None:
    """The known flag of `parser` nearest to `given` (ignoring case and any `=value`), if one is near."""
    flag = given.split("=", 1)[0]
    known: dict[str, str] = {}
    for option in parser._option_string_actions:      # every spelling, dashed aliases included
        known.setdefault(option.lower(), option)
    match = difflib.get_close_matches(flag.lower(), [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
    return known[match[0]] if match else None


def reject(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit as argparse does (usage, message, status 2) naming `unknown` and the flags they come nearest."""
    hints = [(given.split("=", 1)[0], closest_flag(parser, given)) for given in unknown if given.startswith("-")]
    hints = [(flag, near) for flag, near in hints if near is not None]
    message = f"unrecognized argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}"
    if len(hints) == 1:
        message += f"; did you mean {hints[0][1]}?"
    elif hints:
        message += "; did you mean " + ", ".join(f"{near} for {flag}" for flag, near in hints) + "?"
    parser.error(message)
