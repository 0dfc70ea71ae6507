"""`envagent completion {bash,zsh,fish}`: the shell's completion script, made by shtab from the
parser. The script is static, so that a tab press never starts Python; shtab is imported only
when a script is made, so that no other command pays for it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Literal

SHELLS = ("bash", "zsh", "fish")
PathKind = Literal["file", "directory"]
_PATH_KIND = "envagent_path_kind"
"""The attribute that marks an option as taking a path; shtab's own marks need shtab."""


def complete_path(action: argparse.Action, kind: PathKind) -> None:
    """Have the shells complete a path of this kind for `action`."""
    setattr(action, _PATH_KIND, kind)


def path_kind(action: argparse.Action) -> PathKind | None:
    kind: PathKind | None = getattr(action, _PATH_KIND, None)
    return kind


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`envagent completion SHELL` (its help is in agent.cli.main, with the other commands')."""
    parser.add_argument("shell", metavar="SHELL", choices=SHELLS, help="%(choices)s")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` for `shell`, options that take a path marked for it."""
    import shtab

    marks = {"file": shtab.FILE, "directory": shtab.DIRECTORY}
    for each in parsers(parser):
        for action in each._actions:
            kind = path_kind(action)
            if kind is not None:
                action.complete = marks[kind]  # type: ignore[attr-defined]  # shtab reads it
    return shtab.complete(parser, shell)


def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """`parser` and the parser of every command and subcommand under it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers(sub)
