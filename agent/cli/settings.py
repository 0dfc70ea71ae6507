"""The settings of a command: its flags over the environment over the config file, as for
`envagent run` (agent.daemon.config); imported by the commands that need them, not with the
parser, since the settings model loads pydantic."""

from __future__ import annotations

import argparse

from agent.cli.common import SETTING_FLAGS
from agent.daemon.config import LoadedSettings, load_settings


def load_cli_settings(args: argparse.Namespace) -> LoadedSettings:
    """The settings the flags in `args` give with the environment and the config file;
    ConfigError naming every bad value."""
    flags = {flag: getattr(args, flag) for flag in SETTING_FLAGS if hasattr(args, flag)}
    if getattr(args, "debug", None):
        flags["debug"] = True
    return load_settings(flags, config_path=args.config)
