"""Settings of the daemon: flags > environment > config file > defaults.

- Flags: only those the user gave; the CLI passes them by setting name.
- Environment: `ENVAGENT_<SETTING>` for every setting (`ENVAGENT_NAME`, `ENVAGENT_MODE`,
  `ENVAGENT_LOCAL_API_PORT`, ...). The API key and base URL are also read from `LETTA_API_KEY` and
  `LETTA_BASE_URL`, which win over `ENVAGENT_API_KEY`/`ENVAGENT_BASE_URL`: the LETTA_ names are
  the ones every Letta client documents and a coding tool that starts the daemon passes down,
  so they are taken to be the person's intent; the ENVAGENT_ names exist so that every setting
  has one. An empty variable counts as unset, as an empty `FOO=` line in a unit file means.
  A key with no base URL anywhere means Letta's platform, `https://api.letta.com`, as for Letta
  Code and the SDK; with neither, the daemon starts the embedded reference platform.
- Config file: TOML with the setting names as keys, `<XDG config dir>/envagent/config.toml`
  unless `--config` or `ENVAGENT_CONFIG` names another (which must then exist). Unknown keys are
  logged, one warning each, and ignored, so that a typo is visible without stopping the daemon.

Every value, whatever its layer, is validated by the same `Settings` model; a bad one is a
`ConfigError` with one line naming the setting, where it came from and what is wrong. Relative
paths are taken from the current directory.
"""

from __future__ import annotations

import difflib
import logging
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from agent.protocol.models import Mode, Source, parse_mode
from agent.support.loopback import is_loopback_host
from agent.support.paths import config_dir

logger = logging.getLogger("envagent.config")

CONFIG_ENV = "ENVAGENT_CONFIG"
ENV_PREFIX = "ENVAGENT_"
_LETTA_ENV = {"api_key": "LETTA_API_KEY", "base_url": "LETTA_BASE_URL"}
LETTA_CLOUD_URL = "https://api.letta.com"
"""The platform an API key without a base URL is for, as Letta Code and the Letta SDK assume."""
KEY_DEFAULT_SOURCE = "default for an API key"
"""The source `base_url` shows when it is LETTA_CLOUD_URL because only a key was given."""
_KEY_TAIL = 4
_KEY_TAIL_MIN_LENGTH = 12
"""A shorter key is shown as `****` alone: four characters would be too much of it."""

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ConfigError(Exception):
    """A setting or the config file is unusable; the message is one line saying which and why."""


class Settings(BaseModel):
    """Everything the daemon can be told at start-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr | None = None
    base_url: str | None = None
    """None: use the embedded reference platform."""
    name: Text | None = None
    """The connection name; the daemon falls back to the hostname."""
    workdir: Path = Field(default_factory=Path.cwd)
    mode: Mode | None = None
    listener_instance_id: Text | None = None
    source: Source = "local"
    client_version: Text | None = None
    local_api_host: str = "127.0.0.1"
    local_api_port: int = Field(default=0, ge=0, le=65535)
    """0 picks a free port."""
    local_api_socket: Path | None = None
    """A Unix socket to serve the local API on instead of TCP."""
    heartbeat_ms: int | None = Field(default=None, ge=100)
    """Overrides the heartbeat period the platform assigns."""
    log_file: Path | None = None
    debug: bool = False
    upgrade_find_links: Path | None = None
    """Upgrade only from the wheels in this folder (`--no-index --find-links`): an offline
    mirror. Only the daemon's own settings name it: the platform cannot choose the source."""
    ca_file: Path | None = None
    """Trust only the CAs in this PEM file to reach the platform; None: SSL_CERT_FILE, else
    REQUESTS_CA_BUNDLE, else the system's store (`agent.support.tls`)."""

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("the API key is empty")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not _is_plain_http_url(value.strip()):
            # The value is not echoed: it may hold credentials.
            raise ValueError(
                "expected an http(s) URL with a host, no user:password and nothing after the "
                "path, such as https://api.letta.com"
            )
        return value.strip().rstrip("/")

    @field_validator("workdir", "local_api_socket", "log_file", "upgrade_find_links", "ca_file")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.abspath(value.expanduser()))

    @field_validator("workdir")
    @classmethod
    def _existing_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            problem = "is not a directory" if value.exists() else "does not exist"
            raise ValueError(f"{value} {problem}")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _known_mode(cls, value: object) -> object:
        return parse_mode(value) if isinstance(value, str) else value

    @field_validator("local_api_host")
    @classmethod
    def _loopback(cls, value: str) -> str:
        host = value.strip().lower()
        with_port = host.count(":") == 1 or host.startswith("[")  # an address to bind, no port
        if with_port or not is_loopback_host(host):
            raise ValueError(
                "the local API listens on loopback only: expected 127.0.0.1 (or another "
                f"127.x.y.z), ::1 or localhost, got {value!r}"
            )
        return host

    @field_validator("local_api_port", "heartbeat_ms", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {str(value).lower()}")
        return value


@dataclass
class Platform:
    """Where the daemon registers, and with which key: resolved from the settings at start, the
    embedded platform's once it has started."""

    url: str
    api_key: str = field(repr=False)
    """Never in a repr: a log line or a traceback showing this object must not show the key."""
    embedded: bool


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    sources: dict[str, str]
    """For every setting: `flag --name`, `env NAME`, `file /path` or `default`."""
    config_file: Path
    """The config file read, or that would have been read had it existed."""


_Layer = dict[str, tuple[object, str]]
"""Setting name -> (raw value, where it came from)."""


def load_settings(
    flags: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    config_path: Path | None = None,
) -> LoadedSettings:
    """Merge the layers and validate the result; ConfigError names every bad value, on one line.

    `flags` holds the flags the user gave, by setting name (None: not given); `config_path` is
    `--config`. Any other key in `flags` is a programming error (ValueError).
    """
    unknown = flags.keys() - Settings.model_fields.keys()
    if unknown:
        raise ValueError(f"not settings: {', '.join(sorted(unknown))}")
    config_file, required = _config_file(environ, config_path)
    layers = (_flag_layer(flags), _env_layer(environ), _file_layer(config_file, required))
    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        given = next((layer[name] for layer in layers if name in layer), None)
        if given is None:
            sources[name] = "default"
        else:
            values[name], sources[name] = given
    if "api_key" in values and "base_url" not in values:
        values["base_url"], sources["base_url"] = LETTA_CLOUD_URL, KEY_DEFAULT_SOURCE
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, sources)) from None
    return LoadedSettings(settings, sources, config_file)


def announce_implied_base_url(loaded: LoadedSettings) -> None:
    """Say once, at start, that a key alone sent the daemon to Letta's platform rather than
    the embedded one: otherwise a person expecting the embedded one would not know why."""
    if loaded.sources["base_url"] == KEY_DEFAULT_SOURCE:
        logger.info("an API key is set but no base URL: using %s", LETTA_CLOUD_URL)


def render_settings(loaded: LoadedSettings) -> str:
    """`name = value  (source)` for every setting, the API key reduced to its last characters."""
    return "\n".join(
        f"{name} = {_render_value(getattr(loaded.settings, name))}  ({loaded.sources[name]})"
        for name in Settings.model_fields
    )


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
    for name in Settings.model_fields:
        variables = [_LETTA_ENV[name]] if name in _LETTA_ENV else []
        variables.append(ENV_PREFIX + name.upper())
        found = next((variable for variable in variables if environ.get(variable)), None)
        if found is not None:
            layer[name] = (environ[found], f"env {found}")
    return layer


def _file_layer(path: Path, required: bool) -> _Layer:
    try:
        with path.open("rb") as handle:
            mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
            text = handle.read().decode()
        document = tomllib.loads(text)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"config file {path}: does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    if "api_key" in document and mode & 0o077:
        logger.warning(
            "config file %s holds an API key and others may read it (mode %o): chmod 600 it",
            path,
            mode,
        )
    source = f"file {path}"
    layer: _Layer = {}
    for key, value in document.items():
        if key in Settings.model_fields:
            layer[key] = (value, source)
        else:
            _warn_unknown_key(path, key)
    return layer


def _warn_unknown_key(path: Path, key: str) -> None:
    close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    logger.warning("config file %s: unknown key %r ignored%s", path, key, hint)


def _describe(exc: ValidationError, sources: Mapping[str, str]) -> str:
    """One line per bad setting joined by `; `, never showing a value pydantic was given."""
    problems = []
    for error in exc.errors(include_url=False):
        name = str(error["loc"][0])
        cause = error.get("ctx", {}).get("error")
        problem = str(cause) if error["type"] == "value_error" and cause else error["msg"]
        problems.append(f"{name} from {sources[name]}: {problem}")
    return "; ".join(problems)


def _render_value(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, SecretStr):
        key = value.get_secret_value()
        return "****" + (key[-_KEY_TAIL:] if len(key) >= _KEY_TAIL_MIN_LENGTH else "")
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _is_plain_http_url(text: str) -> bool:
    """http(s), a host, no credentials (they would be printed), no query or fragment."""
    try:
        parts = urlsplit(text)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.username is None
        and not parts.query
        and not parts.fragment
    )
