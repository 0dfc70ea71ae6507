"""agent/service/systemd.py: the user and system units, their environment file, and the
systemctl and journalctl command lines.

A unit is checked three ways: setting by setting, with its lines split as systemd splits them
(at a newline, and at a carriage return too); by `systemd-analyze verify`; and by systemd's own
parser, `systemd --test`, whose dump of the loaded unit gives the argv and environment it
would run with. The environment file is read back by a shell, whose double-quote rules are the
ones systemd applies to that file.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.daemon.restart import FINAL_EXIT_CODES
from agent.service.plan import MakeDir, RemoveFile, Run, Step, WriteFile
from agent.service.systemd import SYSTEM_ENV_FILE, UNIT, Systemd
from agent.service.target import ServiceError, ServiceSpec, Target
from agent.support import exitcodes
from tests.helpers import NOBODY
from tests.service.service_helpers import (
    CLI_TIMEOUT_S,
    ENVAGENT,
    KEY,
    KINDS,
    everything_present,
    nothing_present,
    real,
    service,
    spec,
    target,
    under,
)

FINAL = " ".join(str(code) for code in sorted(FINAL_EXIT_CODES))
HARDENING = [
    ("NoNewPrivileges", "yes"),
    ("RestrictSUIDSGID", "yes"),
    ("LockPersonality", "yes"),
    ("RestrictRealtime", "yes"),
    ("RestrictNamespaces", "yes"),
    ("SystemCallArchitectures", "native"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
    ("UMask", "0077"),
]
HOSTILE = 'a "quoted" $HOME ${PATH} $$ %h %% \\ \\n ; #x \' tab\there é🚀'
"""Every character a unit file treats specially, inside one value."""
INJECTION = "x\nExecStartPre=/bin/false\rUser=root\r\n[Install]\nWantedBy=evil.target"
"""Line ends (systemd ends a line at a carriage return too) followed by directives."""


Setting = tuple[str, str, str]


def settings(unit: str) -> list[Setting]:
    """(section, key, value) of every setting, reading the lines as systemd does: split at
    `\\n`, `\\r` or both, comments (`#`, `;`) and blank lines skipped, whitespace stripped."""
    found: list[Setting] = []
    section = ""
    for raw in re.split(r"\r\n|\r|\n", unit):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"a continued line: {line!r}"
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, equals, value = line.partition("=")
        assert equals, f"not a setting: {line!r}"
        found.append((section, key.strip(), value.strip()))
    return found


def rendered(installed: list[Step], path: Path) -> WriteFile:
    files = [step for step in installed if isinstance(step, WriteFile) and step.path == path]
    assert len(files) == 1, installed
    return files[0]


def unit_of(tmp_path: Path, target_: Target, spec_: ServiceSpec) -> str:
    manager = Systemd(target_)
    return rendered(manager.install(spec_, nothing_present).steps, manager.unit_path).content


def quoted(text: str) -> str:
    return f'"{text}"'


def test_files_of_a_user_and_a_system_unit(tmp_path: Path) -> None:
    user = Systemd(target(tmp_path))
    system = Systemd(target(tmp_path, system=True))

    config = tmp_path / "home" / ".config"
    assert user.files == (config / "systemd/user/envagent.service", config / "envagent/service.env")
    assert system.files == (Path("/etc/systemd/system/envagent.service"), SYSTEM_ENV_FILE)


def test_user_unit_setting_by_setting(tmp_path: Path) -> None:
    home = tmp_path / "home"
    unit = unit_of(tmp_path, target(tmp_path), spec(tmp_path))

    assert settings(unit) == [
        ("Unit", "Description", "envagent: this machine as a coding platform environment"),
        ("Service", "Type", "notify"),
        ("Service", "ExecStart", f'"{ENVAGENT}" "run" "--workdir" "{tmp_path}"'),
        ("Service", "EnvironmentFile", f"-{home}/.config/envagent/service.env"),
        ("Service", "Environment", '"PATH=/usr/local/bin:/usr/bin:/bin"'),
        (
            "Service",
            "Environment",
            f'"HOME={home}" "XDG_STATE_HOME={home}/.local/state" "XDG_CONFIG_HOME={home}/.config"',
        ),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartSec", "5"),
        ("Service", "RestartPreventExitStatus", FINAL),
        ("Service", "WatchdogSec", "300"),
        ("Service", "TimeoutStopSec", "15"),
        *(("Service", key, value) for key, value in HARDENING),
        ("Install", "WantedBy", "default.target"),
    ]
    assert KEY not in unit


def test_system_unit_setting_by_setting(tmp_path: Path) -> None:
    """The sandbox, and ReadWritePaths= for the state, the log file's folder and the install."""
    home = tmp_path / "home"
    logs, install = tmp_path / "logs", tmp_path / "venv" / "lib"
    target_ = target(tmp_path, system=True)
    unit = unit_of(tmp_path, target_, spec(tmp_path, log_dir=logs, upgrade_dir=install))

    assert settings(unit) == [
        ("Unit", "Description", "envagent: this machine as a coding platform environment"),
        ("Unit", "Wants", "network-online.target"),
        ("Unit", "After", "network-online.target"),
        ("Service", "Type", "notify"),
        ("Service", "User", target_.account.name),
        ("Service", "ExecStart", f'"{ENVAGENT}" "run" "--workdir" "{tmp_path}"'),
        ("Service", "EnvironmentFile", "-/etc/envagent/service.env"),
        ("Service", "Environment", '"PATH=/usr/local/bin:/usr/bin:/bin"'),
        (
            "Service",
            "Environment",
            f'"HOME={home}" "XDG_STATE_HOME={home}/.local/state" "XDG_CONFIG_HOME={home}/.config"',
        ),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartSec", "5"),
        ("Service", "RestartPreventExitStatus", FINAL),
        ("Service", "WatchdogSec", "300"),
        ("Service", "TimeoutStopSec", "15"),
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "read-only"),
        (
            "Service",
            "ReadWritePaths",
            f'"{home}/.local/state/envagent" "{logs}" "{install}"',
        ),
        ("Service", "CacheDirectory", "envagent"),
        ("Service", "Environment", '"XDG_CACHE_HOME=/var/cache/envagent"'),
        ("Service", "PrivateTmp", "yes"),
        ("Service", "PrivateDevices", "yes"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "ProtectKernelTunables", "yes"),
        ("Service", "ProtectKernelModules", "yes"),
        ("Service", "ProtectKernelLogs", "yes"),
        ("Service", "ProtectControlGroups", "yes"),
        ("Service", "ProtectClock", "yes"),
        ("Service", "ProtectHostname", "yes"),
        *(("Service", key, value) for key, value in HARDENING[1:]),
        ("Install", "WantedBy", "multi-user.target"),
    ]
    assert KEY not in unit


def test_system_unit_writes_only_the_state_folder_without_log_file_or_upgrades(
    tmp_path: Path,
) -> None:
    unit = unit_of(tmp_path, target(tmp_path, system=True), spec(tmp_path))

    state = tmp_path / "home" / ".local" / "state" / "envagent"
    assert ("Service", "ReadWritePaths", quoted(str(state))) in settings(unit)


def test_exec_start_keeps_the_flags_and_names_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "my config.toml"
    flags = ("--workdir", str(tmp_path), "--name", "box", "--mode", "acceptEdits")

    unit = unit_of(tmp_path, target(tmp_path), spec(tmp_path, run_flags=flags, config_file=config))

    exec_start = [value for _, key, value in settings(unit) if key == "ExecStart"]
    words = " ".join(quoted(word) for word in (str(ENVAGENT), "run", *flags))
    assert exec_start == [f'{words} "--config" "{config}"']


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_odd_values_are_quoted_and_escaped(tmp_path: Path, system: bool) -> None:
    """`"` and `\\` escaped; a newline, a carriage return and a tab as C escapes; `%` doubled
    everywhere (a specifier); `$` doubled on the Exec line only (where it expands a variable)."""
    home = tmp_path / "h%me"
    target_ = target(tmp_path, system=system, home=home, state=home / "st$te")
    name = 'n"a\\m$e%\n\r\t'
    spec_ = spec(tmp_path, run_flags=("--name", name), path='/a b:/c"d:$PATH:%h\r')

    found = settings(unit_of(tmp_path, target_, spec_))

    exec_start = f'"{ENVAGENT}" "run" "--name" "n\\"a\\\\m$$e%%\\n\\r\\t"'
    assert ("Service", "ExecStart", exec_start) in found
    assert ("Service", "Environment", '"PATH=/a b:/c\\"d:$PATH:%%h\\r"') in found
    state = f"{tmp_path}/h%%me/st$te"
    env_file = "/etc/envagent/service.env" if system else f"{tmp_path}/h%%me/.config/envagent"
    assert any(
        key == "EnvironmentFile" and value.startswith(f"-{env_file}") for _, key, value in found
    )
    homes = f'"HOME={tmp_path}/h%%me" "XDG_STATE_HOME={state}" '
    assert any(key == "Environment" and value.startswith(homes) for _, key, value in found)
    if system:
        assert ("Service", "ReadWritePaths", f'"{state}/envagent"') in found


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_line_ends_in_values_add_no_setting(tmp_path: Path, system: bool) -> None:
    """The flags, PATH, HOME and (where it goes into Environment= only) XDG_STATE_HOME: however
    hostile, the same settings come out, and no raw line end is written."""
    plain = settings(unit_of(tmp_path, target(tmp_path, system=system), spec(tmp_path)))
    home = tmp_path / INJECTION
    hostile_target = target(
        tmp_path,
        system=system,
        home=home,
        state=tmp_path / "state" if system else home,  # a system unit writes its state folder
        config=tmp_path / "config",  # the folder of the environment file
    )
    hostile_spec = spec(
        tmp_path,
        run_flags=("--workdir", str(home), "--name", INJECTION),
        path=INJECTION,
    )

    unit = unit_of(tmp_path, hostile_target, hostile_spec)

    hostile = settings(unit)
    assert [(section, key) for section, key, _ in hostile] == [
        (section, key) for section, key, _ in plain
    ]
    assert "\r" not in unit
    assert "ExecStartPre" not in {key for _, key, _ in hostile}


@pytest.mark.parametrize(
    ("system", "where"),
    [(False, "config"), (True, "state"), (True, "log")],
    ids=["user-environment-file", "system-state-folder", "system-log-folder"],
)
def test_a_path_with_a_line_end_where_no_escape_exists_is_refused(
    tmp_path: Path, system: bool, where: str
) -> None:
    """EnvironmentFile= and ReadWritePaths= take no C escapes: such a path cannot be written."""
    odd = tmp_path / "x\rReadWritePaths=/"
    target_ = target(
        tmp_path,
        system=system,
        config=odd if where == "config" else None,
        state=odd if where == "state" else None,
    )
    spec_ = spec(tmp_path, log_dir=odd if where == "log" else None)

    with pytest.raises(ServiceError) as refused:
        Systemd(target_).install(spec_, nothing_present)

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value).startswith(repr(str(odd))[:-1])  # the path it names, quoted
    assert "control character" in str(refused.value)


# systemd's own parser: `systemd --test` loads the unit and dumps it as it would run it.

SYSTEMD = shutil.which("systemd", path="/lib/systemd:/usr/lib/systemd")
SUPPORTING_UNITS = ("sysinit.target", "basic.target", "shutdown.target", "-.slice", "system.slice")
"""What a service's default dependencies need, for a unit folder holding nothing else."""
_DUMP_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"|([^\s"]+)')
_DUMP_ESCAPE = re.compile(r"\\([0-7]{3}|.)")
_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v"}


@dataclass(frozen=True)
class Loaded:
    """The unit as systemd loaded it."""

    settings: dict[str, list[str]]
    """The dump's `Name: value` lines of the service (Environment, ReadWritePaths, User...)."""
    argv: list[str]
    """ExecStart= as stored, before `$` expansion at exec time (`$$` still two)."""


def _unescape(found: re.Match[str]) -> str:
    escaped = found.group(1)
    if len(escaped) == 3:
        return chr(int(escaped, 8))
    return _C_ESCAPES.get(escaped, escaped)


def dump_words(line: str) -> list[str]:
    """The words of a dumped command line: plain, or in double quotes with C escapes."""
    return [
        _DUMP_ESCAPE.sub(_unescape, quoted) if plain is None or plain == "" else plain
        for quoted, plain in ((m.group(1), m.group(2)) for m in _DUMP_WORD.finditer(line))
    ]


def _dumped_service(output: str) -> Iterator[str]:
    inside = False
    for line in output.split("\n"):  # only "\n": a dumped value may hold a "\r"
        if line.startswith("\t-> Unit "):
            inside = line == f"\t-> Unit {UNIT}:"
        elif inside:
            yield line


def systemd_loads(unit: str) -> Loaded:
    """Load `unit` with `systemd --test` (as nobody when root, which it refuses); fail on any
    complaint about it."""
    if SYSTEMD is None:
        pytest.skip("no systemd binary in /lib/systemd: the unit was rendered, not loaded")
    drop: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("systemd --test refuses root, and there is no setpriv to run it as nobody")
        drop = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    # A folder of its own that nobody can read: pytest's tmp_path is private to this user.
    with tempfile.TemporaryDirectory(prefix="envagent-unit-") as name:
        folder = Path(name)
        folder.chmod(0o755)
        for file, text in ((UNIT, unit), *((other, "[Unit]\n") for other in SUPPORTING_UNITS)):
            (folder / file).write_text(text, encoding="utf-8")
            (folder / file).chmod(0o644)
        done = subprocess.run(
            [*drop, SYSTEMD, "--test", "--system", f"--unit={UNIT}", "--no-pager"],
            env={
                "SYSTEMD_UNIT_PATH": str(folder),
                "SYSTEMD_LOG_TARGET": "console",
                "SYSTEMD_LOG_COLOR": "0",
                "HOME": str(folder),
                "PATH": os.defpath,
            },
            capture_output=True,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
    out, err = (stream.decode("utf-8", "replace") for stream in (done.stdout, done.stderr))
    complaints = [line for line in err.split("\n") if UNIT in line]  # the log; the dump: out
    assert (done.returncode, complaints) == (0, []), err
    dumped = list(_dumped_service(out))
    if not dumped:
        pytest.skip(f"systemd --test printed no dump of {UNIT} (another version?): {err[-300:]}")
    found: dict[str, list[str]] = {}
    argv: list[str] = []
    for line in dumped:
        if line.startswith("\t\t\tCommand Line: "):
            assert not argv, "one ExecStart= only"
            argv = dump_words(line.removeprefix("\t\t\tCommand Line: "))
        elif line.startswith("\t\t") and not line.startswith("\t\t\t") and ": " in line:
            key, _, value = line[2:].partition(": ")
            found.setdefault(key, []).append(value)
    return Loaded(found, argv)


def test_the_dump_reader_reads_systemds_quoting() -> None:
    """As systemd 252 dumps `"a b" "\\$\\$HOME" "x\\ny" %h ";" "q\\"r" "" "a\\001b"`."""
    line = '/bin/echo "a b" "\\$\\$HOME" "x\\ny" %h ";" "q\\"r" "" "a\\001b" "c\\\\d"'

    assert dump_words(line) == [
        "/bin/echo",
        "a b",
        "$$HOME",
        "x\ny",
        "%h",
        ";",
        'q"r',
        "",
        "a\x01b",
        "c\\d",
    ]


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_systemd_loads_hostile_values_exactly(tmp_path: Path, system: bool) -> None:
    """systemd itself parses the unit: the daemon's argv comes out word for word (its `$`
    doubled until exec time), and PATH, HOME and the XDG folders byte for byte."""
    home = tmp_path / "my home %h $HOME"
    # A carriage return but no newline in the environment's values: the dump prints each raw,
    # on a line of its own.
    env_value = HOSTILE + "\rUser=root"
    target_ = target(
        tmp_path,
        system=system,
        home=home,
        state=(home / "state ; x") if system else home / env_value,
        config=home / "conf ig",
    )
    flags = ("--workdir", str(tmp_path / HOSTILE), "--name", INJECTION, "--mode", ";")
    logs = tmp_path / "log's %n"
    spec_ = spec(tmp_path, run_flags=flags, path=env_value, log_dir=logs, upgrade_dir=home)

    loaded = systemd_loads(unit_of(tmp_path, target_, spec_))

    argv = [*spec_.command(with_config=True)]
    assert loaded.argv == [word.replace("$", "$$") for word in argv]
    assert loaded.settings["Environment"][:4] == [
        f"{name}={value}" for name, value in {"PATH": env_value, **target_.environment}.items()
    ]
    env_file = SYSTEM_ENV_FILE if system else target_.config_dir / "service.env"
    assert loaded.settings["EnvironmentFile"] == [f"-{env_file}"]
    if system:
        assert loaded.settings["User"] == [target_.account.name]
        writable = (target_.state_dir, logs, home)
        assert loaded.settings["ReadWritePaths"] == [" ".join(str(path) for path in writable)]
        assert loaded.settings["Environment"][4:] == ["XDG_CACHE_HOME=/var/cache/envagent"]
    else:
        assert "User" not in loaded.settings
        assert len(loaded.settings["Environment"]) == 4


# The environment file: the key is there and nowhere else.


def environment_file(tmp_path: Path, spec_: ServiceSpec) -> tuple[WriteFile, dict[str, str]]:
    """The written environment file, and its two values as a POSIX shell reads them."""
    manager = Systemd(target(tmp_path))
    written = rendered(manager.install(spec_, nothing_present).steps, manager.env_path)
    file = tmp_path / "service.env"
    file.write_text(written.content)
    read = subprocess.run(
        ["sh", "-c", '. "$1" && printf "%s\\0%s" "$LETTA_API_KEY" "$LETTA_BASE_URL"', "sh", file],
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=True,
    )
    key, url = read.stdout.decode().split("\0")
    return written, {"LETTA_API_KEY": key, "LETTA_BASE_URL": url}


@pytest.mark.parametrize(
    "key",
    [KEY, "k\"e\\y$HOME`id`$(id)'%h", "two\nlines", "  spaced  "],
    ids=["plain", "shell-special", "newline", "spaces"],
)
def test_the_key_is_read_back_exactly_from_the_0600_file(tmp_path: Path, key: str) -> None:
    written, values = environment_file(
        tmp_path, spec(tmp_path, api_key=key, base_url="https://api.example.com/x$y")
    )

    assert values == {"LETTA_API_KEY": key, "LETTA_BASE_URL": "https://api.example.com/x$y"}
    assert (written.mode, written.owner) == (0o600, None)
    assert key not in written.shown
    assert "LETTA_API_KEY=****" in written.shown.splitlines()
    assert 'LETTA_BASE_URL="https://api.example.com/x\\$y"' in written.shown.splitlines()


def test_a_base_url_alone_leaves_the_key_empty(tmp_path: Path) -> None:
    written, values = environment_file(
        tmp_path, spec(tmp_path, api_key=None, base_url="http://127.0.0.1:8283")
    )

    assert values == {"LETTA_API_KEY": "", "LETTA_BASE_URL": "http://127.0.0.1:8283"}
    assert "LETTA_API_KEY=" in written.shown.splitlines()


# The network variables: in the environment file too, never in the unit.

PASSWORD = 'p"w$x`y\\z'
"""A proxy password holding every character the environment file escapes."""
NETWORK = {
    "https_proxy": f"http://alice:{PASSWORD}@proxy.corp:3128",
    "NO_PROXY": "localhost,.internal.corp",
    "SSL_CERT_FILE": "/etc/ssl/corp $HOME/ca.pem",
}


def sourced(tmp_path: Path, written: WriteFile) -> dict[str, str]:
    """Every variable a POSIX shell, with an empty environment, exports from the file."""
    file = tmp_path / "service.env"
    file.write_text(written.content)
    read = subprocess.run(
        ["env", "-i", "sh", "-c", 'set -a && . "$1" && exec env -0', "sh", str(file)],
        capture_output=True,
        timeout=CLI_TIMEOUT_S,
        check=True,
    )
    entries = (entry.partition("=") for entry in read.stdout.decode().split("\0") if entry)
    return {name: value for name, _, value in entries if name not in ("PWD", "SHLVL", "_")}


def test_the_network_goes_into_the_0600_file_exactly_and_never_into_the_unit(
    tmp_path: Path,
) -> None:
    manager = Systemd(target(tmp_path))
    steps = manager.install(spec(tmp_path, network=NETWORK), nothing_present).steps
    env_file, unit = rendered(steps, manager.env_path), rendered(steps, manager.unit_path)

    assert sourced(tmp_path, env_file) == {"LETTA_API_KEY": KEY, "LETTA_BASE_URL": "", **NETWORK}
    assert (env_file.mode, unit.mode) == (0o600, 0o644)
    assert all(value not in unit.content for value in NETWORK.values())
    assert "alice" not in unit.content and "alice" not in unit.shown
    assert PASSWORD not in env_file.shown
    assert env_file.shown.splitlines()[-3:] == [
        'https_proxy="http://alice:***@proxy.corp:3128"',  # the name in the case found
        'NO_PROXY="localhost,.internal.corp"',
        'SSL_CERT_FILE="/etc/ssl/corp \\$HOME/ca.pem"',  # quoted as the key is
    ]


def test_the_network_alone_writes_the_file(tmp_path: Path) -> None:
    manager = Systemd(target(tmp_path))
    network = {"HTTPS_PROXY": "proxy.corp:3128"}

    plan = manager.install(spec(tmp_path, api_key=None, network=network), nothing_present)

    written = rendered(plan.steps, manager.env_path)
    assert sourced(tmp_path, written) == {"LETTA_API_KEY": "", "LETTA_BASE_URL": "", **network}
    assert 'HTTPS_PROXY="proxy.corp:3128"' in written.shown.splitlines()  # no password: as is


def test_without_network_variables_the_file_holds_only_the_key(tmp_path: Path) -> None:
    manager = Systemd(target(tmp_path))

    written = rendered(manager.install(spec(tmp_path), nothing_present).steps, manager.env_path)

    lines = [line for line in written.content.splitlines() if line and not line.startswith("#")]
    assert lines == [f'LETTA_API_KEY="{KEY}"', "LETTA_BASE_URL="]


# The plans and commands.


def test_user_install_plan(tmp_path: Path) -> None:
    manager = Systemd(target(tmp_path))

    plan = manager.install(spec(tmp_path), nothing_present)

    assert [type(step) for step in plan.steps] == [WriteFile, WriteFile, Run, Run]
    env_file, unit = plan.steps[0], plan.steps[1]
    assert isinstance(env_file, WriteFile) and isinstance(unit, WriteFile)
    assert (env_file.path, env_file.mode) == (manager.env_path, 0o600)
    assert (unit.path, unit.mode, unit.owner) == (manager.unit_path, 0o644, None)
    assert unit.shown == unit.content
    assert plan.steps[2:] == [
        Run(("systemctl", "--user", "daemon-reload")),
        Run(("systemctl", "--user", "enable", "--now", UNIT)),
    ]
    assert plan.notes == []


def test_system_install_plan_makes_the_writable_folders_for_the_user(tmp_path: Path) -> None:
    target_ = target(tmp_path, system=True)
    manager = Systemd(target_)

    plan = manager.install(spec(tmp_path, log_dir=tmp_path / "logs"), nothing_present)

    assert plan.steps[:2] == [
        MakeDir(target_.state_dir, 0o700, target_.account),
        MakeDir(tmp_path / "logs", 0o700, target_.account),
    ]
    env_file = plan.steps[2]
    assert isinstance(env_file, WriteFile)
    assert (env_file.path, env_file.owner) == (SYSTEM_ENV_FILE, None)  # root's: systemd reads it
    assert plan.steps[4:] == [
        Run(("systemctl", "daemon-reload")),
        Run(("systemctl", "enable", "--now", UNIT)),
    ]


def test_a_replaced_unit_is_restarted_and_a_stale_environment_file_removed(
    tmp_path: Path,
) -> None:
    manager = Systemd(target(tmp_path))

    plan = manager.install(spec(tmp_path, api_key=None), everything_present)

    assert plan.steps[0] == RemoveFile(manager.env_path)
    assert plan.steps[-1] == Run(("systemctl", "--user", "restart", UNIT))
    assert plan.notes == [f"{manager.unit_path} exists: it is replaced and the service restarted"]
    assert not any(
        isinstance(step, WriteFile) and step.path == manager.env_path for step in plan.steps
    )


def test_no_key_and_no_environment_file_writes_none(tmp_path: Path) -> None:
    manager = Systemd(target(tmp_path))

    plan = manager.install(spec(tmp_path, api_key=None), nothing_present)

    paths = [step.path for step in plan.steps if isinstance(step, WriteFile | RemoveFile)]
    assert paths == [manager.unit_path]


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_uninstall_plan(tmp_path: Path, system: bool) -> None:
    target_ = target(tmp_path, system=system)
    manager = Systemd(target_)
    scope = () if system else ("--user",)

    plan = manager.uninstall(lambda path: path == manager.unit_path)

    assert plan.steps == [
        Run(("systemctl", *scope, "disable", "--now", UNIT), may_fail=True),
        RemoveFile(manager.unit_path),
        Run(("systemctl", *scope, "daemon-reload")),
        Run(("systemctl", *scope, "reset-failed", UNIT), may_fail=True),
    ]
    journal = " ".join(("journalctl", *scope, "-u", UNIT))
    assert plan.notes == [f"the state in {target_.state_dir} and the logs (`{journal}`) are kept"]


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_status_and_logs_command_lines(tmp_path: Path, system: bool) -> None:
    manager = Systemd(target(tmp_path, system=system))
    scope = () if system else ("--user",)

    assert manager.status() == ("systemctl", *scope, "status", UNIT, "--no-pager")
    assert manager.logs(False, 20) == (
        "journalctl",
        *scope,
        "-u",
        UNIT,
        "--lines",
        "20",
        "--no-pager",
    )
    assert manager.logs(True, 5)[-3:] == ("5", "--no-pager", "--follow")


# Moved from test_install.py: the real CLI's units, verified by systemd-analyze.


@pytest.mark.parametrize("name", ["systemd-user", "systemd-system"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    """With the network variables too: in the environment file, never the unit or the output."""
    kind, home, root = KINDS[name], tmp_path / "home", tmp_path / "root"
    proxy = "http://alice:s3cret@proxy.corp:3128"
    done = service(
        home,
        "install",
        "--root",
        str(root),
        *kind.flags,
        "--workdir",
        str(tmp_path),
        "--name",
        'box "one" 5%Q $HOME',
        "--mode",
        "acceptEdits",
        "--base-url",
        "https://api.example.com",
        network={"HTTPS_PROXY": proxy, "https_proxy": "", "no_proxy": "*.corp"},
    )

    assert done.code == exitcodes.OK, done.err
    unit = under(root, real(kind.service_file, home))
    env_file = under(root, real(kind.secrets_file, home))
    assert env_file.read_text().splitlines()[-2:] == [f'HTTPS_PROXY="{proxy}"', 'no_proxy="*.corp"']
    assert "s3cret" not in unit.read_text() and "s3cret" not in done.out
    for command in kind.commands:
        assert f"would run: {command}" in done.out
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert f'LETTA_API_KEY="{KEY}"' in env_file.read_text().splitlines()
    assert 'LETTA_BASE_URL="https://api.example.com"' in env_file.read_text().splitlines()
    text = unit.read_text()
    assert KEY not in text
    assert f"EnvironmentFile=-{real(kind.secrets_file, home)}" in text
    assert f'ExecStart="{ENVAGENT}" "run" "--workdir" "{tmp_path}"' in text
    assert f"\nRestartPreventExitStatus={FINAL}\n" in text  # the same codes launchd sees as 0

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was rendered but not verified")
    runtime = tmp_path / "runtime"  # a user-scope verify wants XDG_RUNTIME_DIR, nothing more
    runtime.mkdir(mode=0o700)
    scope = [] if name == "systemd-system" else ["--user"]
    verify = subprocess.run(
        [analyze, *scope, "verify", "--man=no", "--generators=no", str(unit)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
