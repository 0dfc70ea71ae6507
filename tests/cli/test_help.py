"""The help of every command, checked over the whole parser tree, so that an option added later
is held to the same rules: each option, positional and subcommand says what it is for; an option
whose values the implementation checks against a fixed set declares it as `choices` and shows
it; a default is shown; an option that takes a path is completed as one by the shells."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

from agent.cli.completion import parsers, path_kind
from agent.cli.main import build_parser
from agent.cli.platform import LOG_FORMATS
from agent.daemon.config import Settings
from agent.platform.access import ROLES
from agent.protocol.models import MODES
from agent.service.target import MANAGERS

Entry = tuple[argparse.ArgumentParser, argparse.Action]


def entries() -> list[Entry]:
    """Every action of every parser, but -h and --version, which argparse words itself."""
    return [
        (parser, action)
        for parser in parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction | argparse._VersionAction)
    ]


def named(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return f"{parser.prog} {'/'.join(action.option_strings) or action.metavar or action.dest}"


def flat(text: str) -> str:
    """`text` with argparse's line wrapping undone."""
    return " ".join(text.split())


def entry_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """What `--help` prints for `action`: its flags and metavar, then its help."""
    formatter = parser.formatter_class(prog=parser.prog)
    formatter.add_argument(action)
    return flat(formatter.format_help())


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help `--help` prints for `action` alone, `%(default)s` and the like filled in."""
    return flat(parser.formatter_class(prog=parser.prog)._expand_help(action))


def literal_values(annotation: object) -> tuple[object, ...]:
    """The values of the Literal in a type (`Mode | None` gives the modes), else none."""
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return tuple(value for arg in get_args(annotation) for value in literal_values(arg))


FIXED_SETS: dict[str, tuple[object, ...]] = {
    **{
        name: values
        for name, field in Settings.model_fields.items()
        if (values := literal_values(field.annotation))
    },
    "value": MODES,  # envagent mode set MODE
    "role": ROLES,
    "manager": MANAGERS,
    "log_format": tuple(LOG_FORMATS),
}
"""By destination, the values the implementation accepts: every setting the `Settings` model
checks against a Literal (the mode, the source), and the other flags' sets."""


def test_every_option_positional_and_subcommand_has_help() -> None:
    missing = []
    for parser, action in entries():
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(named(parser, action))
        if isinstance(action, argparse._SubParsersAction):
            described = {choice.dest for choice in action._get_subactions() if choice.help}
            missing += [f"{parser.prog} {name}" for name in action.choices if name not in described]
    assert not missing, f"no help: {missing}"


def test_a_fixed_set_of_values_is_declared_as_choices_and_shown() -> None:
    wrong = []
    checked = set()
    for parser, action in entries():
        expected = FIXED_SETS.get(action.dest)
        if expected is not None:
            checked.add(action.dest)
            if action.choices is None or list(action.choices) != list(expected):
                wrong.append(f"{named(parser, action)}: choices {action.choices}, not {expected}")
        if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
            shown = entry_text(parser, action)
            wrong += [
                f"{named(parser, action)}: {choice!r} is not in its help"
                for choice in action.choices
                if str(choice) not in shown
            ]
    assert not wrong, f"a fixed set of values not declared or not shown: {wrong}"
    assert {"mode", "value", "source", "role", "manager", "log_format"} <= checked


def test_a_default_is_shown_in_the_help() -> None:
    """A flag (store_true and the like) is left out: its default is its absence. So is a
    default of None, which the help describes in words where it matters."""
    hidden = []
    checked = set()
    for parser, action in entries():
        if action.default is None or action.default == argparse.SUPPRESS or action.nargs == 0:
            continue
        checked.add(action.dest)
        if str(action.default) not in help_text(parser, action):
            hidden.append(f"{named(parser, action)}: default {action.default!r}")
    assert not hidden, f"a default the help does not show: {hidden}"
    assert {"port", "heartbeat_ms", "role", "lines"} <= checked


def test_no_help_shows_a_default_of_none() -> None:
    shown = [
        named(parser, action)
        for parser, action in entries()
        if "default: None" in help_text(parser, action)
    ]
    assert not shown, f"help showing 'default: None': {shown}"


_PATH_METAVAR = re.compile(r"FILE|DIR|PATH")


def takes_path(action: argparse.Action) -> bool:
    """A `Path` argument, a setting the `Settings` model types as a path, or a metavar that
    says so (`--database FILE_OR_URL`)."""
    field = Settings.model_fields.get(action.dest)
    annotation = field.annotation if field else None
    typed = annotation is Path or Path in get_args(annotation)
    return action.type is Path or typed or bool(_PATH_METAVAR.search(str(action.metavar or "")))


def test_an_option_that_takes_a_path_is_completed_as_one() -> None:
    wrong = []
    for parser, action in entries():
        kind = path_kind(action)
        if takes_path(action) and kind is None:
            wrong.append(f"{named(parser, action)}: not completed as a path")
        if action.metavar == "DIR" and kind != "directory":
            wrong.append(f"{named(parser, action)}: completed as {kind}, not a directory")
    assert not wrong, f"a path the shells would not complete: {wrong}"


def test_the_lazy_parser_main_uses_parses_every_command_as_the_whole_tree_does() -> None:
    """`main` adds a command's flags only when that command is parsed: each command line, one
    for every command and action, comes out the same as from the parser built whole."""
    lines = [
        ["run", "--mode", "acceptEdits", "--name", "box", "--foreground", "--debug"],
        ["status", "--json", "--listener-instance-id", "work"],
        ["list", "--local", "--online-only", "--json"],
        ["mode", "set", "bypassPermissions"],
        ["mode", "get"],
        ["metadata", "--workdir", "/tmp"],
        ["config", "show", "--source", "remote"],
        ["doctor", "--json"],
        ["platform", "serve", "--port", "0"],
        ["upgrade", "--dry-run"],
        ["service", "install", "--user"],
        ["completion", "bash"],
    ]
    whole = build_parser()
    assert {line[0] for line in lines} == set(_commands(whole))
    for line in lines:
        assert build_parser(lazy=True).parse_args(line) == whole.parse_args(line), line
    lazy = build_parser(lazy=True)
    assert set(_commands(lazy)) == set(_commands(whole))  # listed before any is parsed


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    (commands,) = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return list(commands.choices)
