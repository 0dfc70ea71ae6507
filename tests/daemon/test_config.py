"""Settings: flags > environment > config file > defaults, one clear line per bad value."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from agent.daemon.config import (
    ConfigError,
    LoadedSettings,
    Platform,
    Settings,
    announce_implied_base_url,
    load_settings,
    render_settings,
)
from agent.support.paths import config_dir

KEY = "envk_0123456789abcdefwxyz"


@pytest.fixture
def config_file() -> Path:
    """The default config file's path (in the test's XDG config dir), not yet written."""
    return config_dir() / "config.toml"


def write_config(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def load(
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> LoadedSettings:
    return load_settings(flags or {}, env or {}, config_path)


def config_error(
    flags: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> str:
    with pytest.raises(ConfigError) as raised:
        load(flags, env, config_path)
    message = str(raised.value)
    assert "\n" not in message
    return message


def config_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "envagent.config" and record.levelno == logging.WARNING
    ]


def test_defaults(config_file: Path) -> None:
    loaded = load()
    assert loaded.settings == Settings(workdir=Path.cwd())
    assert loaded.settings.api_key is None
    assert loaded.settings.local_api_host == "127.0.0.1"
    assert loaded.settings.local_api_port == 0
    assert loaded.settings.source == "local"
    assert set(loaded.sources) == set(Settings.model_fields)
    assert set(loaded.sources.values()) == {"default"}
    assert loaded.config_file == config_file


# (setting, flag value, env variable and value, TOML value, and what each layer gives)
PRECEDENCE = [
    ("name", "from-flag", ("ENVAGENT_NAME", "from-env"), '"from-file"', None),
    ("mode", "standard", ("ENVAGENT_MODE", "acceptEdits"), '"unrestricted"', None),
    ("local_api_port", 7001, ("ENVAGENT_LOCAL_API_PORT", "7002"), "7003", 0),
    ("heartbeat_ms", 1001, ("ENVAGENT_HEARTBEAT_MS", "1002"), "1003", None),
    ("debug", False, ("ENVAGENT_DEBUG", "true"), "false", False),
    ("source", "remote", ("ENVAGENT_SOURCE", "local"), '"remote"', "local"),
    ("ca_file", "/flag/ca.pem", ("ENVAGENT_CA_FILE", "/env/ca.pem"), '"/file/ca.pem"', None),
    (
        "base_url",
        "http://flag.test",
        ("LETTA_BASE_URL", "http://env.test/"),
        '"https://file.test/"',
        None,
    ),
]
EXPECTED = {
    "name": ("from-flag", "from-env", "from-file"),
    "mode": ("standard", "acceptEdits", "unrestricted"),
    "local_api_port": (7001, 7002, 7003),
    "heartbeat_ms": (1001, 1002, 1003),
    "debug": (False, True, False),
    "source": ("remote", "local", "remote"),
    "ca_file": (Path("/flag/ca.pem"), Path("/env/ca.pem"), Path("/file/ca.pem")),
    "base_url": ("http://flag.test", "http://env.test", "https://file.test"),
}


@pytest.mark.parametrize(("name", "flag", "env", "toml", "default"), PRECEDENCE)
def test_each_layer_beats_the_ones_below(
    config_file: Path,
    name: str,
    flag: object,
    env: tuple[str, str],
    toml: str,
    default: object,
) -> None:
    write_config(config_file, f"{name} = {toml}\n")
    flags = {name: flag}
    environ = dict([env])
    from_flag, from_env, from_file = EXPECTED[name]
    layers = [
        (flags, environ, from_flag, f"flag --{name.replace('_', '-')}"),
        ({}, environ, from_env, f"env {env[0]}"),
        ({}, {}, from_file, f"file {config_file}"),
    ]
    for given_flags, given_env, value, source in layers:
        loaded = load(given_flags, given_env)
        assert getattr(loaded.settings, name) == value
        assert loaded.sources[name] == source
    config_file.unlink()
    loaded = load()
    assert getattr(loaded.settings, name) == default
    assert loaded.sources[name] == "default"


def test_flags_given_as_none_are_not_given(config_file: Path) -> None:
    write_config(config_file, 'name = "from-file"\n')
    loaded = load({"name": None, "mode": None})
    assert loaded.settings.name == "from-file"
    assert loaded.sources["mode"] == "default"


def test_empty_environment_variables_count_as_unset() -> None:
    loaded = load(env={"ENVAGENT_NAME": "", "LETTA_API_KEY": "", "ENVAGENT_API_KEY": KEY})
    assert loaded.settings.name is None
    assert loaded.sources["api_key"] == "env ENVAGENT_API_KEY"


@pytest.mark.parametrize(
    ("name", "letta", "envagent"),
    [
        ("api_key", ("LETTA_API_KEY", KEY), ("ENVAGENT_API_KEY", "envk_other_key_0000")),
        (
            "base_url",
            ("LETTA_BASE_URL", "http://letta.test"),
            ("ENVAGENT_BASE_URL", "http://e.test"),
        ),
    ],
)
def test_letta_variables_beat_envagent_ones(
    name: str, letta: tuple[str, str], envagent: tuple[str, str]
) -> None:
    both = load(env=dict([letta, envagent]))
    assert both.sources[name] == f"env {letta[0]}"
    only_envagent = load(env=dict([envagent]))
    assert only_envagent.sources[name] == f"env {envagent[0]}"
    assert _plain(getattr(both.settings, name)) == letta[1]
    assert _plain(getattr(only_envagent.settings, name)) == envagent[1]


def test_a_key_without_a_base_url_means_letta(config_file: Path) -> None:
    """As Letta Code and the SDK: a key alone is for api.letta.com, from any layer."""
    assert load().settings.base_url is None  # no key: the embedded platform
    from_env = load(env={"LETTA_API_KEY": KEY})
    from_file = load(config_path=write_config(config_file, f'api_key = "{KEY}"\n'))
    for loaded in (from_env, from_file):
        assert loaded.settings.base_url == "https://api.letta.com"
        assert loaded.sources["base_url"] == "default for an API key"
    assert (
        "base_url = https://api.letta.com  (default for an API key)"
        in render_settings(from_env).splitlines()
    )
    given = load(env={"ENVAGENT_API_KEY": KEY, "ENVAGENT_BASE_URL": "http://own.test"})
    assert given.settings.base_url == "http://own.test"


def test_the_implied_base_url_is_said_once_without_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="envagent.config")
    announce_implied_base_url(load(env={"LETTA_BASE_URL": "http://own.test", "LETTA_API_KEY": KEY}))
    announce_implied_base_url(load())
    assert caplog.messages == []
    announce_implied_base_url(load(env={"LETTA_API_KEY": KEY}))
    assert caplog.messages == ["an API key is set but no base URL: using https://api.letta.com"]


def _plain(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_environment_strings_are_converted_like_other_values(tmp_path: Path) -> None:
    settings = load(
        env={
            "ENVAGENT_LOCAL_API_PORT": "8080",
            "ENVAGENT_DEBUG": "1",
            "ENVAGENT_WORKDIR": str(tmp_path),
            "ENVAGENT_LOG_FILE": str(tmp_path / "envagent.log"),
            "ENVAGENT_LOCAL_API_SOCKET": str(tmp_path / "envagent.sock"),
            "ENVAGENT_LISTENER_INSTANCE_ID": "  work  ",
            "ENVAGENT_CLIENT_VERSION": "1.2.3",
        }
    ).settings
    assert settings.local_api_port == 8080
    assert settings.debug is True
    assert settings.workdir == tmp_path
    assert settings.log_file == tmp_path / "envagent.log"
    assert settings.local_api_socket == tmp_path / "envagent.sock"
    assert settings.listener_instance_id == "work"
    assert settings.client_version == "1.2.3"


def test_the_config_file_can_be_named_by_flag_or_environment(tmp_path: Path) -> None:
    by_env = write_config(tmp_path / "env.toml", 'name = "env-file"\n')
    by_flag = write_config(tmp_path / "flag.toml", 'name = "flag-file"\n')
    environ = {"ENVAGENT_CONFIG": str(by_env)}
    assert load(env=environ).settings.name == "env-file"
    assert load(env=environ).config_file == by_env
    loaded = load(env=environ, config_path=by_flag)
    assert loaded.settings.name == "flag-file"
    assert loaded.sources["name"] == f"file {by_flag}"


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    assert config_error(config_path=missing) == f"config file {missing}: does not exist"
    assert str(missing) in config_error(env={"ENVAGENT_CONFIG": str(missing)})


def test_a_missing_default_config_file_is_fine(config_file: Path) -> None:
    assert not config_file.exists()
    assert load().settings.name is None


@pytest.mark.parametrize(
    ("flags", "env", "toml", "expected"),
    [
        (
            {},
            {"ENVAGENT_MODE": "auto"},
            "",
            "mode from env ENVAGENT_MODE: unknown mode 'auto': expected one of default, "
            "standard, acceptEdits, bypassPermissions, unrestricted",
        ),
        ({"mode": "yolo"}, {}, "", "mode from flag --mode: unknown mode 'yolo'"),
        ({}, {}, "local_api_port = 70000", "local_api_port from file {file}: Input should be"),
        ({}, {}, "local_api_port = true", "local_api_port from file {file}: expected a whole"),
        (
            {},
            {"ENVAGENT_LOCAL_API_PORT": "http"},
            "",
            "local_api_port from env ENVAGENT_LOCAL_API_PORT: Input should be a valid integer",
        ),
        ({"heartbeat_ms": 50}, {}, "", "heartbeat_ms from flag --heartbeat-ms: Input should be"),
        ({}, {}, "name = 5", "name from file {file}: Input should be a valid string"),
        ({}, {}, 'name = "  "', "name from file {file}: String should have at least 1"),
        ({"name": "x" * 201}, {}, "", "name from flag --name: String should have at most 200"),
        ({}, {}, 'debug = "maybe"', "debug from file {file}: Input should be a valid boolean"),
        ({}, {"ENVAGENT_SOURCE": "cloud"}, "", "source from env ENVAGENT_SOURCE: Input should"),
        ({}, {"LETTA_BASE_URL": "ftp://x.test"}, "", "base_url from env LETTA_BASE_URL: expected"),
        ({"base_url": "localhost:8283"}, {}, "", "base_url from flag --base-url: expected"),
        ({}, {}, 'base_url = "http://"', "base_url from file {file}: expected an http(s) URL"),
        ({}, {"LETTA_API_KEY": "   "}, "", "api_key from env LETTA_API_KEY: the API key is empty"),
        ({}, {}, "api_key = 1234567890123", "api_key from file {file}: Input should be a valid"),
        (
            {},
            {"ENVAGENT_LOCAL_API_HOST": "0.0.0.0"},
            "",
            "local_api_host from env ENVAGENT_LOCAL_API_HOST: the local API listens on loopback",
        ),
        ({}, {}, "workdir = 3", "workdir from file {file}: Input is not a valid path"),
    ],
)
def test_a_bad_value_is_one_line_naming_setting_and_source(
    config_file: Path, flags: dict[str, object], env: dict[str, str], toml: str, expected: str
) -> None:
    write_config(config_file, toml)
    message = config_error(flags, env)
    assert message.startswith(expected.format(file=config_file))
    assert "1234567890123" not in message


def test_several_bad_values_are_all_named_on_one_line() -> None:
    message = config_error({"mode": "auto"}, {"ENVAGENT_LOCAL_API_PORT": "-1"})
    assert message == (
        "mode from flag --mode: unknown mode 'auto': expected one of default, standard, "
        "acceptEdits, bypassPermissions, unrestricted; "
        "local_api_port from env ENVAGENT_LOCAL_API_PORT: "
        "Input should be greater than or equal to 0"
    )


@pytest.mark.parametrize(
    ("name", "good", "bad"),
    [
        ("local_api_port", [0, 1, 65535], [-1, 65536]),
        ("heartbeat_ms", [100, 101], [99, 0]),
        ("name", ["n", "n" * 200], ["", "n" * 201]),
        ("client_version", ["1", "1" * 200], ["1" * 201]),
    ],
)
def test_bounds_hold_at_both_ends(name: str, good: list[object], bad: list[object]) -> None:
    for value in good:
        assert getattr(load({name: value}).settings, name) == value
    for value in bad:
        assert config_error({name: value}).startswith(f"{name} from flag --")


@pytest.mark.parametrize("name", ["local_api_port", "heartbeat_ms"])
def test_a_boolean_is_no_number(config_file: Path, name: str) -> None:
    write_config(config_file, f"{name} = true\n")
    assert config_error() == f"{name} from file {config_file}: expected a whole number, got true"


def test_unknown_file_keys_warn_once_each_and_are_ignored(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(config_file, f'api-key = "{KEY}"\ncolour = "blue"\nname = "kept"\n')
    loaded = load()
    assert loaded.settings.name == "kept"
    assert loaded.settings.api_key is None
    first, second = config_warnings(caplog)
    assert str(config_file) in first
    assert "'api-key'" in first
    assert "did you mean 'api_key'?" in first
    assert "'colour'" in second
    assert "did you mean" not in second
    assert KEY not in caplog.text


def test_bad_toml_is_one_line_naming_the_file(config_file: Path) -> None:
    write_config(config_file, 'name = "ok"\nmode = \n')
    message = config_error()
    assert message.startswith(f"config file {config_file}: not valid TOML: ")
    assert "line 2" in message


def test_a_config_file_that_is_not_utf8_is_bad_toml(config_file: Path) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_bytes(b'name = "\xff"\n')
    assert config_error().startswith(f"config file {config_file}: not valid TOML: ")


def test_an_unreadable_config_file_is_one_line(config_file: Path) -> None:
    config_file.mkdir(parents=True)
    assert config_error() == f"config file {config_file}: cannot read it: Is a directory"


def test_a_key_in_a_file_others_can_read_is_warned_about(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_config(config_file, f'api_key = "{KEY}"\n', mode=0o600)
    load()
    assert config_warnings(caplog) == []
    config_file.chmod(0o644)
    load()
    [warning] = config_warnings(caplog)
    assert "chmod 600" in warning
    assert KEY not in caplog.text


@pytest.mark.parametrize(("mode", "warned"), [(0o700, False), (0o601, True), (0o640, True)])
def test_any_permission_for_others_than_the_owner_is_warned_about(
    config_file: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool
) -> None:
    write_config(config_file, f'api_key = "{KEY}"\n', mode=mode)
    load()
    assert len(config_warnings(caplog)) == warned
    caplog.clear()
    write_config(config_file, 'name = "no key here"\n', mode=mode)
    load()
    assert config_warnings(caplog) == []


def test_render_shows_every_setting_with_its_source(tmp_path: Path) -> None:
    loaded = load({"workdir": tmp_path, "local_api_port": 7000}, {"LETTA_API_KEY": KEY})
    lines = render_settings(loaded).splitlines()
    assert len(lines) == len(Settings.model_fields)
    assert lines[0] == "api_key = ****wxyz  (env LETTA_API_KEY)"
    assert f"workdir = {tmp_path}  (flag --workdir)" in lines
    assert "local_api_port = 7000  (flag --local-api-port)" in lines
    assert "name = (not set)  (default)" in lines
    assert "debug = false  (default)" in lines


def test_render_says_when_no_key_is_set() -> None:
    assert "api_key = (not set)  (default)" in render_settings(load()).splitlines()


def test_a_short_key_shows_none_of_its_characters() -> None:
    rendered = render_settings(load(env={"LETTA_API_KEY": "k-1234"}))
    assert "api_key = ****  (env LETTA_API_KEY)" in rendered.splitlines()
    assert "1234" not in rendered


@pytest.mark.parametrize(("key", "shown"), [("0123456789ab", "****89ab"), ("0123456789a", "****")])
def test_a_key_shows_its_last_four_characters_from_twelve_on(key: str, shown: str) -> None:
    rendered = render_settings(load(env={"LETTA_API_KEY": key}))
    assert f"api_key = {shown}  (env LETTA_API_KEY)" in rendered.splitlines()


def test_the_key_never_appears_in_reprs_or_renders(config_file: Path) -> None:
    write_config(config_file, f'api_key = "{KEY}"\n')
    loaded = load()
    assert loaded.settings.api_key is not None
    assert loaded.settings.api_key.get_secret_value() == KEY
    shown = [
        repr(loaded),
        str(loaded),
        repr(loaded.settings),
        str(loaded.settings),
        loaded.settings.model_dump_json(),
        render_settings(loaded),
    ]
    assert all(KEY not in text for text in shown)
    assert all(KEY[:-4] not in text for text in shown)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "localhost"])
def test_loopback_hosts_are_accepted(host: str) -> None:
    assert load({"local_api_host": host}).settings.local_api_host == host


def test_localhost_is_accepted_in_any_case() -> None:
    assert load({"local_api_host": "LocalHost"}).settings.local_api_host == "localhost"


@pytest.mark.parametrize(
    "host",
    [
        *["0.0.0.0", "192.168.1.5", "::", "10.0.0.1", "example.com", "localhost.evil.test", ""],
        # Loopback, but with a port or brackets: an address to bind is a bare host.
        *["127.0.0.1:8080", "localhost:80", "[::1]", "[::1]:8080"],
    ],
)
def test_other_hosts_are_refused(host: str) -> None:
    message = config_error({"local_api_host": host})
    assert message.startswith("local_api_host from flag --local-api-host: ")
    assert "loopback only" in message


def test_workdir_must_be_an_existing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert config_error({"workdir": missing}) == (
        f"workdir from flag --workdir: {missing} does not exist"
    )
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert config_error(env={"ENVAGENT_WORKDIR": str(a_file)}) == (
        f"workdir from env ENVAGENT_WORKDIR: {a_file} is not a directory"
    )


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    settings = load(
        {"workdir": "project/../project", "log_file": "~/envagent.log", "ca_file": "corp.pem"}
    ).settings
    assert settings.workdir == tmp_path / "project"
    assert settings.ca_file == tmp_path / "corp.pem"
    assert settings.log_file == tmp_path / "home" / "envagent.log"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://127.0.0.1:8283/", "http://127.0.0.1:8283"),
        ("https://api.letta.com", "https://api.letta.com"),
        ("https://example.test/letta//", "https://example.test/letta"),
    ],
)
def test_base_url_loses_its_trailing_slash(given: str, kept: str) -> None:
    assert load({"base_url": given}).settings.base_url == kept


@pytest.mark.parametrize(
    "url",
    [
        "https://user:secret@example.test",
        "https://example.test/?x=1",
        "https:///path",
        "http://[::1",  # urlsplit refuses it with ValueError
    ],
)
def test_base_url_refuses_credentials_queries_and_missing_hosts(url: str) -> None:
    message = config_error({"base_url": url})
    assert message.startswith("base_url from flag --base-url: expected an http(s) URL")


def test_settings_are_frozen() -> None:
    loaded = load()
    with pytest.raises(ValidationError):
        loaded.settings.debug = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.sources = {}  # type: ignore[misc]


def test_a_platform_is_its_url_its_key_and_whether_it_is_the_embedded_one() -> None:
    platform = Platform(url="http://127.0.0.1:8283", api_key="envk_dev", embedded=True)
    assert platform == Platform("http://127.0.0.1:8283", "envk_dev", True)
    assert platform != Platform("http://127.0.0.1:8283", "envk_dev", False)


def test_a_flag_that_is_not_a_setting_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not settings: verbose"):
        load({"verbose": True})


def test_the_platform_s_repr_leaves_the_key_out() -> None:
    shown = repr(Platform("https://api.letta.com", "sk-secret-key-1234", embedded=False))
    assert "sk-secret-key-1234" not in shown and "https://api.letta.com" in shown


def test_the_layering_names_every_setting_of_the_model() -> None:
    from agent.support.settings import SETTING_NAMES

    assert tuple(Settings.model_fields) == SETTING_NAMES


def test_one_setting_alone_has_the_models_rule_and_ignores_the_others(config_file: Path) -> None:
    from agent.cli.settings import text_setting

    write_config(config_file, 'mode = "turbo"\nlistener_instance_id = "  work "\n')
    assert (
        text_setting("listener_instance_id", {}, environ={}) == "work"
    )  # mode is not its business
    assert config_error().startswith("mode from file")
    for value, problem in ((5, "Input should be a valid string"), ("x" * 201, "at most 200")):
        with pytest.raises(ConfigError) as raised:
            text_setting("listener_instance_id", {"listener_instance_id": value}, environ={})
        assert problem in str(raised.value)
        assert str(raised.value).startswith("listener_instance_id from flag --listener-instance-id")
        with pytest.raises(ConfigError) as full:
            load({"listener_instance_id": value})
        assert str(full.value).endswith("; " + str(raised.value))  # after the file's bad mode
