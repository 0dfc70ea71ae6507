"""`envagent service` (agent/cli/service.py): its flags, how they reach the install, and every
refusal as one line with its exit code. Run in this process, with a home under tmp_path; the
units and plists themselves are checked in tests/service/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.service.launchd import Launchd
from agent.service.systemd import Systemd
from agent.support import exitcodes
from tests.service.service_helpers import ENVAGENT, KEY, NETWORK_VARIABLES, FakeTools, target


@pytest.fixture(autouse=True)
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installing shell: a home of its own, the key in LETTA_API_KEY, no other setting, no
    proxy or CA file variable, not under sudo, in its home (the default working directory)."""
    for name in list(os.environ):
        if name.startswith(("LETTA_", "ENVAGENT_", "SUDO_")) or name in NETWORK_VARIABLES:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("LETTA_API_KEY", KEY)
    monkeypatch.chdir(home)
    return home


def envagent(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        code = main(["service", *args])
    except SystemExit as exited:  # argparse's refusals
        code = exited.code if isinstance(exited.code, int) else exitcodes.ERROR
    out, err = capsys.readouterr()
    return code, out, err


def unit_under(root: Path, tmp_path: Path) -> str:
    """The user unit an install wrote under `root` (the XDG folders: the autouse fixture's)."""
    unit = Systemd(target(tmp_path, config=tmp_path / "config")).unit_path
    return (root / unit.relative_to("/")).read_text()


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("install", "--user", "--system"), "argument --system: not allowed with argument --user"),
        (("install", "--dry-run", "--root", "x"), "argument --root: not allowed with argument"),
        (("logs", "-n", "0"), "argument -n/--lines: expected a number above 0, got 0"),
        (("status", "--manager", "upstart"), "argument --manager: invalid choice: 'upstart'"),
        (("status", "--follow"), "unrecognized arguments: --follow"),
        ((), "the following arguments are required: ACTION"),
    ],
    ids=[
        "user-and-system",
        "dry-run-and-root",
        "no-lines",
        "unknown-manager",
        "flag-of-logs",
        "none",
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], problem: str
) -> None:
    code, out, err = envagent(capsys, *args)

    assert (code, out) == (exitcodes.CONFIG, "")
    assert err.count("\n") == 1 and err.startswith("envagent")
    assert problem in err


def test_refusals_are_one_line_with_their_code(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = envagent(capsys, "install", "--run-as", "root", "--dry-run")

    assert (code, out) == (exitcodes.CONFIG, "")
    assert err == "envagent: --run-as is for --system; a user service runs as you\n"


def test_a_bad_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = envagent(capsys, "install", "--dry-run", "--workdir", str(tmp_path / "gone"))

    assert code == exitcodes.CONFIG
    assert err.count("\n") == 1
    assert err.startswith(f"envagent: workdir from flag --workdir: {tmp_path / 'gone'} does not")


def test_a_file_that_cannot_be_written_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "a-file"
    root.write_text("")

    code, _, err = envagent(capsys, "install", "--manager", "systemd", "--root", str(root))

    assert code == exitcodes.ERROR
    assert err.count("\n") == 1
    assert err.startswith(f"envagent: {root}/") and err.endswith(": Not a directory\n")


def test_a_relative_root_is_taken_from_the_current_folder(
    tmp_path: Path, shell: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = envagent(capsys, "install", "--manager", "systemd", "--root", "image")

    assert code == exitcodes.OK, err
    assert out.splitlines()[-1] == f"done under {shell / 'image'}; the commands above were not run"
    assert "ExecStart=" in unit_under(shell / "image", tmp_path)


def test_the_install_flags_reach_the_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--workdir, --name, --mode on its command line; --base-url beside the key; --config
    passed on since it was named."""
    config = tmp_path / "my.toml"
    config.write_text("heartbeat_ms = 5000\n")
    root = tmp_path / "root"

    code, _, err = envagent(
        capsys,
        "install",
        *("--manager", "systemd", "--root", str(root), "--workdir", str(tmp_path)),
        *("--name", "box", "--mode", "acceptEdits", "--base-url", "https://api.example.com"),
        *("--config", str(config)),
    )

    assert code == exitcodes.OK, err
    assert (
        f'ExecStart="{ENVAGENT}" "run" "--workdir" "{tmp_path}" "--name" "box" "--mode" '
        f'"acceptEdits" "--config" "{config}"\n'
    ) in unit_under(root, tmp_path)
    env_file = root / Systemd(target(tmp_path, config=tmp_path / "config")).env_path.relative_to(
        "/"
    )
    assert 'LETTA_BASE_URL="https://api.example.com"' in env_file.read_text().splitlines()


@pytest.mark.parametrize("named", [True, False], ids=["ENVAGENT_CONFIG", "default-config"])
def test_the_config_file_is_passed_on_only_when_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], named: bool
) -> None:
    """A named config file (ENVAGENT_CONFIG here) is the service's too; the default one is
    found by the service itself, in the same XDG config folder."""
    config = tmp_path / "config" / "envagent" / "config.toml"
    if named:
        config = tmp_path / "elsewhere.toml"
        monkeypatch.setenv("ENVAGENT_CONFIG", str(config))
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("debug = true\n")
    root = tmp_path / "root"

    code, _, err = envagent(capsys, "install", "--manager", "systemd", "--root", str(root))

    assert code == exitcodes.OK, err
    assert (f'"--config" "{config}"' in unit_under(root, tmp_path)) is named


def test_without_manager_this_platforms_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = envagent(capsys, "install", "--dry-run")

    assert code == exitcodes.OK
    assert ("envagent.service" in out) is (os.uname().sysname == "Linux")
    assert ("org.envagent.plist" in out) is (os.uname().sysname == "Darwin")


def test_logs_dispatch_with_their_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """`service logs -n 2 --manager launchd`: launchctl there (a stand-in), the real tail."""
    tools = FakeTools(tmp_path / "tools")
    tools.add("launchctl")
    monkeypatch.setenv("PATH", f"{tools.bin}{os.pathsep}{os.environ['PATH']}")
    log = Launchd(target(tmp_path, "launchd")).log_path
    log.parent.mkdir(parents=True)
    log.write_text("one\ntwo\nthree\n")

    code = main(["service", "logs", "--manager", "launchd", "-n", "2"])

    assert (code, capfd.readouterr().out) == (exitcodes.OK, "two\nthree\n")


def test_uninstall_of_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = envagent(capsys, "uninstall", "--manager", "launchd", "--root", str(tmp_path))

    assert code == exitcodes.OK
    assert out.startswith("no envagent service is installed (launchd user agent: no ")
