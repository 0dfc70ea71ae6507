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

The layers are merged by agent.support.settings (one copy, also used by the commands that read
one setting alone). Every value, whatever its layer, is validated by the same `Settings` model;
a bad one is a `ConfigError` with one line naming the setting, where it came from and what is
wrong. Relative paths are taken from the current directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from agent.protocol.constants import check_text
from agent.protocol.models import Mode, Source, parse_mode
from agent.support.loopback import is_loopback_host
from agent.support.settings import CONFIG_ENV as CONFIG_ENV
from agent.support.settings import KEY_DEFAULT_SOURCE as KEY_DEFAULT_SOURCE
from agent.support.settings import LETTA_CLOUD_URL as LETTA_CLOUD_URL
from agent.support.settings import LOGGER, layered
from agent.support.settings import ConfigError as ConfigError

logger = logging.getLogger(LOGGER)

_KEY_TAIL = 4
_KEY_TAIL_MIN_LENGTH = 12
"""A shorter key is shown as `****` alone: four characters would be too much of it."""

Text = Annotated[str, BeforeValidator(check_text)]
"""Stripped, 1 to 200 characters: the rule of `check_text`, which the commands that read one
setting alone apply too."""


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


def load_settings(
    flags: Mapping[str, object],
    environ: Mapping[str, str] = os.environ,
    config_path: Path | None = None,
) -> LoadedSettings:
    """Merge the layers and validate the result; ConfigError names every bad value, on one line.

    `flags` holds the flags the user gave, by setting name (None: not given); `config_path` is
    `--config`. Any other key in `flags` is a programming error (ValueError).
    """
    values, sources, config_file = layered(flags, environ, config_path)
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
