"""The settings of a command: its flags over the environment over the config file, as for
`envagent run`. The full set (`load_cli_settings`) loads pydantic, with agent.daemon.config;
the commands that only find the running daemon need one setting and read it without it
(`instance_id`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from agent.cli.common import SETTING_FLAGS
from agent.protocol.constants import check_text
from agent.support.settings import ConfigError, layered

if TYPE_CHECKING:
    from agent.daemon.config import LoadedSettings


def load_cli_settings(args: argparse.Namespace) -> LoadedSettings:
    """The settings the flags in `args` give with the environment and the config file;
    ConfigError naming every bad value."""
    from agent.daemon.config import load_settings

    flags = _flags(args)
    if getattr(args, "debug", None):
        flags["debug"] = True
    return load_settings(flags, config_path=args.config)


def instance_id(args: argparse.Namespace) -> str | None:
    """`listener_instance_id`, from the same layers and checked by the same rule as in
    `load_cli_settings`; the other settings are neither read into a model nor checked, since
    the command does not use them (a bad `mode` in the config file does not stop `status`).
    An unusable config file still is a ConfigError."""
    return text_setting("listener_instance_id", _flags(args), args.config)


def text_setting(
    name: str,
    flags: dict[str, object],
    config_path: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """One text setting, through the same layers and rule as `Settings`, the others not
    validated."""
    found = layered(flags, environ, config_path)
    if name not in found.values:
        return None
    try:
        return check_text(found.values[name])
    except ValueError as exc:
        raise ConfigError(f"{name} from {found.sources[name]}: {exc}") from None


def _flags(args: argparse.Namespace) -> dict[str, object]:
    return {flag: getattr(args, flag) for flag in SETTING_FLAGS if hasattr(args, flag)}
