"""The `envagent` parser and its table of handlers (agent/cli/main.py): every command reaches its
own function, `--help` and `--version`, usage errors, and the exit code of each failure class.
In this process through `main(argv)`; as a process only what needs one (the entry point's exit
codes, Ctrl-C, what a fresh interpreter loads)."""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from agent.cli.main import _HANDLERS, build_parser, main
from agent.localapi.client import address_file
from agent.protocol.models import LocalApiAddress
from agent.support import exitcodes
from agent.support.files import write_private
from agent.support.paths import state_dir
from tests.helpers import WAIT_S


def envagent(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`envagent ARGS` in this process, for a command that returns its exit code."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def exits(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[object, str, str]:
    """`envagent ARGS` in this process, for what argparse ends itself (help, version, usage)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def subcommands(parser: argparse.ArgumentParser) -> list[list[str]]:
    """Every command path of `parser`, `["platform", "keys", "create"]` and all above it."""
    found: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append([name])
                found.extend([name, *rest] for rest in subcommands(sub))
    return found


# --- the table ---------------------------------------------------------------------------------


def test_the_table_has_a_handler_for_every_command_and_no_other() -> None:
    top = {path[0] for path in subcommands(build_parser()) if len(path) == 1}
    assert top == set(_HANDLERS)


@dataclass(frozen=True)
class Reaches:
    """What a command's own function answers to `argv`, in a home with no daemon running."""

    argv: list[str]
    code: int
    out: str = ""
    """A part of stdout only that function prints."""
    err: str = ""
    """The start of its one line on stderr."""


NO_DAEMON = "envagent: no daemon is running (no "


def _cases(tmp_path: Path) -> dict[str, Reaches]:
    db = str(tmp_path / "platform.db")
    missing = tmp_path / "missing"
    return {
        "run": Reaches(
            ["run", "--workdir", str(missing)],
            exitcodes.CONFIG,
            err=f"envagent: workdir from flag --workdir: {missing} does not exist",
        ),
        "status": Reaches(["status"], exitcodes.ERROR, err=NO_DAEMON),
        "list": Reaches(
            ["list", "--base-url", "http://127.0.0.1:9"],
            exitcodes.ERROR,
            err="envagent: no API key for http://127.0.0.1:9: set LETTA_API_KEY",
        ),
        "mode": Reaches(["mode", "set", "acceptEdits"], exitcodes.ERROR, err=NO_DAEMON),
        "metadata": Reaches(
            ["metadata", "--workdir", str(tmp_path)],
            exitcodes.OK,
            out=f'"workingDirectory": "{tmp_path}"',
        ),
        "config": Reaches(
            ["config", "show", "--name", "box"], exitcodes.OK, out="\nname = box  (flag --name)\n"
        ),
        "platform": Reaches(
            ["platform", "keys", "create", "--org", "o", "--user", "u", "--db", db],
            exitcodes.OK,
            err=f"envagent: member key for user u of o stored in {db}",
        ),
        "upgrade": Reaches(
            ["upgrade", "--dry-run"],  # the tests run from the source tree
            exitcodes.UPGRADE_REFUSED,
            err="envagent: this install does not upgrade itself. ",
        ),
        "service": Reaches(
            ["service", "install", "--dry-run", "--manager", "systemd", "--workdir", str(missing)],
            exitcodes.CONFIG,
            err=f"envagent: workdir from flag --workdir: {missing} does not exist",
        ),
        "completion": Reaches(["completion", "bash"], exitcodes.OK, out="complete -o bashdefault"),
        "doctor": Reaches(
            ["doctor", "--workdir", str(missing)],
            exitcodes.ERROR,
            out=f"FAIL settings      workdir from flag --workdir: {missing} does not exist\n",
        ),
    }


def test_every_command_has_a_case_below() -> None:
    assert set(_cases(Path("/x"))) == set(_HANDLERS)


@pytest.mark.parametrize("command", sorted(_HANDLERS))
def test_each_command_reaches_its_own_function(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LETTA_API_KEY", raising=False)
    case = _cases(tmp_path)[command]
    code, out, err = envagent(capsys, *case.argv)
    assert code == case.code, err
    assert case.out in out
    assert err.startswith(case.err)
    assert err.count("\n") == (1 if case.err else 0)


def test_platform_keys_list_reaches_its_own_function(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = envagent(capsys, "platform", "keys", "list", "--db", str(tmp_path / "p.db"))
    assert (code, out.split(), err) == (
        0,
        ["ORGANIZATION", "USER", "OWNER", "ROLE", "CREATED", "FINGERPRINT"],
        "",
    )


async def test_platform_serve_reaches_its_own_function(tmp_path: Path) -> None:
    """A process: the platform sets up its logging and would serve until stopped. A file that
    is not a database ends it before it listens, with one line and exit 1."""
    damaged = tmp_path / "platform.db"
    damaged.write_text("not a database")
    code, out, err = await run_envagent("platform", "serve", "--port", "0", "--db", str(damaged))
    assert (code, out) == (exitcodes.ERROR, "")
    assert err.startswith(f"envagent: cannot use the platform database {damaged}")
    assert err.count("\n") == 1


# --- help and version --------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert exits(capsys, "--version") == (0, f"envagent {__version__}\n", "")


def test_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = exits(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: envagent [-h] [--version] COMMAND ...\n")
    listed = set(re.findall(r"^    (\S+)", out, re.MULTILINE))  # not a long name's wrapped help
    assert listed == set(_HANDLERS)


def test_no_arguments_prints_the_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = envagent(capsys)
    assert (code, err) == (exitcodes.OK, "")
    assert out == exits(capsys, "--help")[1]


def test_every_command_has_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    """Each parser formats its help (a stray `%` in a help text would raise instead)."""
    paths = subcommands(build_parser())
    assert ["platform", "keys", "create"] in paths and ["mode", "set"] in paths
    for path in paths:
        code, out, err = exits(capsys, *path, "--help")
        assert (code, err) == (0, ""), path
        assert out.startswith(f"usage: envagent {' '.join(path)} "), path


def test_run_help_lists_every_settings_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from agent.cli.common import SETTING_FLAGS

    out = exits(capsys, "run", "--help")[1]
    for name in SETTING_FLAGS:
        assert f"--{name.replace('_', '-')} " in out, name


# --- usage errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["status", "--bogus"], "envagent: unrecognized arguments: --bogus"),
        (["run", "--parent-pid", "0"], "envagent run: argument --parent-pid: expected a number"),
        (["config"], "envagent config: the following arguments are required: ACTION"),
        (["platform"], "envagent platform: the following arguments are required: ACTION"),
        (["platform", "keys"], "envagent platform keys: the following arguments are required"),
        (["mode", "set"], "envagent mode set: the following arguments are required: MODE"),
        (["mode", "set", "auto"], "envagent mode set: argument MODE: invalid choice: 'auto'"),
        (["run", "--mode", "turbo"], "envagent run: argument --mode: invalid choice: 'turbo'"),
        (["config", "show", "--source", "cloud"], "envagent config show: argument --source: "),
        (
            ["platform", "keys", "create", "--org", "o"],
            "envagent platform keys create: the following arguments are required: --user",
        ),
        (
            ["list", "--local", "--platform"],
            "envagent list: argument --platform: not allowed with argument --local",
        ),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(
    args: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exits(capsys, *args)
    assert (code, out) == (exitcodes.CONFIG, "")
    assert err.startswith(line)
    prog = line.split(":")[0]
    assert err.endswith(f" (see {prog} --help)\n") and err.count("\n") == 1


def test_every_parser_gives_usage_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """The subcommands' parsers, those of other modules included, are made by the same class."""
    for path in subcommands(build_parser()):
        code, out, err = exits(capsys, *path, "--no-such-flag")
        assert (code, out) == (exitcodes.CONFIG, ""), path
        assert err.startswith("envagent") and err.count("\n") == 1, (path, err)


@pytest.mark.parametrize(
    ("args", "prog", "choices"),
    [
        (["nosuch"], "envagent", list(_HANDLERS)),
        (["Status"], "envagent", list(_HANDLERS)),  # commands are case-sensitive
        (["platform", "nosuch"], "envagent platform", ["serve", "keys"]),
        (["platform", "keys", "delete"], "envagent platform keys", ["create", "list"]),
        (["config", "set"], "envagent config", ["show"]),
    ],
)
def test_an_unknown_command_is_named_with_the_known_ones(
    args: list[str], prog: str, choices: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exits(capsys, *args)
    assert (code, out) == (exitcodes.CONFIG, "")
    assert err.startswith(f"{prog}: argument ")
    assert f"invalid choice: '{args[-1]}'" in err and err.count("\n") == 1
    known = re.findall(r"[\w-]+", err.partition("(choose from ")[2])
    assert set(choices) <= set(known)


# --- the failure classes -----------------------------------------------------------------------


def test_a_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    code, out, err = envagent(capsys, "metadata", "--workdir", str(missing))
    assert (code, out) == (exitcodes.CONFIG, "")
    assert err == f"envagent: workdir from flag --workdir: {missing} does not exist\n"


def test_a_bad_config_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text("mode = \n")
    code, out, err = envagent(capsys, "config", "show", "--config", str(config))
    assert (code, out) == (exitcodes.CONFIG, "")
    assert err.startswith(f"envagent: config file {config}: not valid TOML: ")
    assert err.count("\n") == 1


def test_what_a_client_cannot_do_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = envagent(capsys, "status")
    assert (code, out) == (exitcodes.ERROR, "")
    assert err == (f"{NO_DAEMON}{state_dir()}/local-api.json); start one: envagent run\n")


def test_an_unusable_platform_database_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damaged = tmp_path / "platform.db"
    damaged.write_text("not a database")
    code, out, err = envagent(capsys, "platform", "keys", "list", "--db", str(damaged))
    assert (code, out) == (exitcodes.ERROR, "")
    assert err.startswith(f"envagent: cannot use the platform database {damaged}")
    assert err.count("\n") == 1


# --- as a process ------------------------------------------------------------------------------


async def run_envagent(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=-1, stderr=-1, stdin=-3
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("args", "code", "out", "err"),
    [
        (["--version"], 0, f"envagent {__version__}\n", ""),
        (["nosuch"], exitcodes.CONFIG, "", "envagent: argument COMMAND: invalid choice: 'nosuch'"),
        (["status"], exitcodes.ERROR, "", NO_DAEMON),
    ],
)
async def test_the_entry_point_exits_with_the_code(
    args: list[str], code: int, out: str, err: str
) -> None:
    """`python -m agent`, as the `envagent` script: what argparse exits with, and what a
    command returns, is the process's exit code."""
    got = await run_envagent(*args)
    assert got[:2] == (code, out)
    assert got[2].startswith(err) and got[2].count("\n") == (1 if err else 0)


async def test_a_bare_envagent_prints_the_help_and_exits_0() -> None:
    code, out, err = await run_envagent()
    assert (code, err) == (exitcodes.OK, "")
    assert out.startswith("usage: envagent [-h] [--version] COMMAND ...\n")


async def test_ctrl_c_ends_a_command_with_0_and_no_traceback() -> None:
    """`envagent status` waiting on a daemon that accepted and never answers: Ctrl-C ends it
    quietly, as a person who gave up waiting expects."""
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    address = LocalApiAddress(url=f"http://127.0.0.1:{port}")
    write_private(address_file(None), address.model_dump_json().encode())
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "status", stdout=-1, stderr=-1, stdin=-3,
        # Python turns SIGINT into KeyboardInterrupt only if it was not ignored when it started,
        # as it is for a background job of a shell without job control.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        await asyncio.wait_for(accepted.wait(), WAIT_S)
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for writer in held:
            writer.close()
        server.close()
    assert (process.returncode, out, err) == (exitcodes.OK, b"", b"")
