"""Where each setting comes from: flags > environment > config file > default, for the daemon's
`Settings` (agent.daemon.config, which validates them all with pydantic) and for the commands
that need one setting alone and load no pydantic (`status`, `mode`, `list --local` need only
`listener_instance_id`, agent.cli.settings). One copy of the layering, plain Python.

- Flags: only those the user gave, by setting name (None: not given).
- Environment: `ENVAGENT_<SETTING>` for every setting; the API key and base URL also from
  `LETTA_API_KEY` and `LETTA_BASE_URL`, which win. An empty variable counts as unset.
- Config file: TOML with the setting names as keys, `<XDG config dir>/envagent/config.toml`
  unless `--config` or `ENVAGENT_CONFIG` names another (which must then exist). Unknown keys
  are logged (`envagent.config`), one warning each, and ignored.

A bad value or file is a `ConfigError` whose message is one line naming the setting, where it
came from and what is wrong.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from agent.support.paths import config_dir

CONFIG_ENV = "ENVAGENT_CONFIG"
ENV_PREFIX = "ENVAGENT_"
LETTA_ENV = {"api_key": "LETTA_API_KEY", "base_url": "LETTA_BASE_URL"}
LETTA_CLOUD_URL = "https://api.letta.com"
"""The platform an API key without a base URL is for, as Letta Code and the Letta SDK assume."""
KEY_DEFAULT_SOURCE = "default for an API key"
"""The source `base_url` shows when it is LETTA_CLOUD_URL because only a key was given."""
LOGGER = "envagent.config"

SETTING_NAMES = (
    "api_key",
    "base_url",
    "name",
    "workdir",
    "mode",
    "listener_instance_id",
    "source",
    "client_version",
    "local_api_host",
    "local_api_port",
    "local_api_socket",
    "heartbeat_ms",
    "log_file",
    "debug",
    "upgrade_find_links",
    "ca_file",
)
"""Every setting, in the order of the `Settings` model's fields (a test holds them equal)."""


class ConfigError(Exception):
    """A setting or the config file is unusable; the message is one line saying which and why."""


class Layered(NamedTuple):
    values: dict[str, object]
    """The raw value of every setting some layer gives (not yet validated)."""
    sources: dict[str, str]
    """For every setting: `flag --name`, `env NAME`, `file /path` or `default`."""
    config_file: Path
    """The config file read, or that would have been read had it existed."""


_Layer = dict[str, tuple[object, str]]
"""Setting name -> (raw value, where it came from)."""


def layered(
    flags: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    config_path: Path | None = None,
) -> Layered:
    """The raw value and source of each setting; ConfigError for an unusable config file.

    `flags` holds the flags the user gave, by setting name (None: not given); `config_path` is
    `--config`. Any other key in `flags` is a programming error (ValueError).
    """
    unknown = flags.keys() - set(SETTING_NAMES)
    if unknown:
        raise ValueError(f"not settings: {', '.join(sorted(unknown))}")
    config_file, required = _config_file(environ, config_path)
    layers = (_flag_layer(flags), _env_layer(environ), _file_layer(config_file, required))
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in SETTING_NAMES:
        given = next((layer[name] for layer in layers if name in layer), None)
        if given is None:
            sources[name] = "default"
        else:
            values[name], sources[name] = given
    if "api_key" in values and "base_url" not in values:
        values["base_url"], sources["base_url"] = LETTA_CLOUD_URL, KEY_DEFAULT_SOURCE
    return Layered(values, sources, config_file)


def _config_file(environ: Mapping[str, str], config_path: Path | None) -> tuple[Path, bool]:
    """The config file and whether it must exist (it must when the user named it)."""
    named = config_path or (Path(environ[CONFIG_ENV]) if environ.get(CONFIG_ENV) else None)
    if named is None:
        return config_dir() / "config.toml", False
    return Path(os.path.abspath(named.expanduser())), True


def _flag_layer(flags: Mapping[str, object]) -> _Layer:
    return {
        name: (value, f"flag --{name.replace('_', '-')}")
        for name, value in flags.items()
        if value is not None
    }


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    layer: _Layer = {}
    for name in SETTING_NAMES:
        variables = [LETTA_ENV[name]] if name in LETTA_ENV else []
        variables.append(ENV_PREFIX + name.upper())
        found = next((variable for variable in variables if environ.get(variable)), None)
        if found is not None:
            layer[name] = (environ[found], f"env {found}")
    return layer


def _file_layer(path: Path, required: bool) -> _Layer:
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            data = handle.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    import tomllib  # only when there is a file: most machines have none

    try:
        document = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    if "api_key" in document and mode & 0o077:
        _warn(
            "config file %s holds an API key and others may read it (mode %o): chmod 600 it",
            path,
            mode,
        )
    source = f"file {path}"
    layer: _Layer = {}
    for key, value in document.items():
        if key in SETTING_NAMES:
            layer[key] = (value, source)
        else:
            _warn_unknown_key(path, key)
    return layer


def _warn_unknown_key(path: Path, key: str) -> None:
    import difflib

    close = difflib.get_close_matches(key, list(SETTING_NAMES), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    _warn("config file %s: unknown key %r ignored%s", path, key, hint)


def _warn(message: str, *args: object) -> None:
    """A warning on the `envagent.config` logger; logging is loaded only when there is one."""
    import logging

    logging.getLogger(LOGGER).warning(message, *args)
