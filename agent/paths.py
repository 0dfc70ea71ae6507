"""Where envagent keeps its files, following the XDG base directory rules."""

import os
from pathlib import Path


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    # The spec says relative values are invalid and must be ignored.
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / "envagent"


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state")


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config")


def platform_state_dir() -> Path:
    return state_dir() / "platform"
