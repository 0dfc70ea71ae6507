"""`envagent completion SHELL`: the script for each shell, read by the real shell. bash and fish
are asked for completions as a tab press asks; zsh parses the script and finds it on `$fpath`.
A shell that is missing skips its tests (`.ci/run` installs them); `--version` never imports
shtab."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.completion import SHELLS
from agent.cli.main import _HANDLERS, main
from agent.protocol.models import MODES
from agent.support import exitcodes
from tests.helpers import WAIT_S


def shell(name: str) -> str:
    """The shell's path, or skip the test saying how to get it."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {name}; .ci/run installs it)")
    return found


def write_script(name: str, path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["completion", name]) == exitcodes.OK
    out, err = capsys.readouterr()
    assert err == ""
    path.write_text(out)
    return path


def run_shell(argv: list[str], cwd: Path) -> str:
    """Run a shell with a home of its own in `cwd`, and return what it printed."""
    environment = {"PATH": os.environ["PATH"], "HOME": str(cwd), "XDG_CONFIG_HOME": str(cwd)}
    done = subprocess.run(
        argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=WAIT_S
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("name", SHELLS)
def test_each_shell_gets_a_script(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", name]) == exitcodes.OK
    out, err = capsys.readouterr()
    assert err == ""
    assert all(command in out for command in _HANDLERS)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder to complete paths in: `d/` holds a folder and a file."""
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "file.txt").touch()
    return tmp_path


BASH_TAB = r"""
source "$1"; shift
function=$(complete -p envagent | sed -n 's/.* -F \([^ ]*\) .*/\1/p')
COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
"$function" envagent "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""
"""Source the script, then call the function it registered for `envagent`, as bash does on a
tab press after the words given (the last is the one being completed)."""


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["envagent", ""], sorted(_HANDLERS)),
        (["envagent", "run", "--mo"], ["--mode"]),
        (["envagent", "run", "--mode", ""], sorted(MODES)),
        (["envagent", "platform", "serve", "--log-format", "j"], ["json"]),
        (["envagent", "mode", "set", "acc"], ["acceptEdits"]),
        (["envagent", "run", "--workdir", "d/"], ["d/sub"]),
        (["envagent", "run", "--log-file", "d/"], ["d/file.txt", "d/sub"]),
    ],
)
def test_bash_completes_commands_options_values_and_paths(
    words: list[str], expected: list[str], tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = write_script("bash", tree / "envagent.bash", capsys)
    argv = [shell("bash"), "--norc", "--noprofile", "-c", BASH_TAB, "bash", str(script), *words]
    assert sorted(run_shell(argv, tree).splitlines()) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("envagent ", sorted(_HANDLERS)),
        ("envagent run --mo", ["--mode"]),
        ("envagent run --mode ", sorted(MODES)),
        ("envagent run --workdir d/", ["d/sub/"]),
    ],
)
def test_fish_completes_commands_options_values_and_paths(
    line: str, expected: list[str], tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fish = shell("fish")
    script = write_script("fish", tree / "envagent.fish", capsys)
    assert run_shell([fish, "--no-execute", str(script)], tree) == ""
    asked = 'source $argv[1]; complete -C"$argv[2]"'
    out = run_shell([fish, "--no-config", "-c", asked, str(script), line], tree)
    assert sorted(row.split("\t")[0] for row in out.splitlines()) == expected


def test_zsh_parses_the_script_and_finds_it_on_fpath(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zsh = shell("zsh")
    (tree / "functions").mkdir()
    script = write_script("zsh", tree / "functions" / "_envagent", capsys)
    assert run_shell([zsh, "-n", str(script)], tree) == ""
    found = "fpath=($1 $fpath); autoload -Uz compinit; compinit -u -d $2; print ${_comps[envagent]}"
    argv = [zsh, "-f", "-c", found, "zsh", str(script.parent), str(tree / "zcompdump")]
    assert run_shell(argv, tree) == "_envagent\n"


def imported_by(*args: str) -> set[str]:
    """The modules `python -m agent ARGS` imports, as `-X importtime` lists them."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=True,
    )
    return {
        line.rpartition("|")[2].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }


def test_version_does_not_import_shtab() -> None:
    imported = imported_by("--version")
    assert "agent.cli.completion" in imported  # the command is there, its library is not
    assert "shtab" not in imported
    assert "shtab" in imported_by("completion", "bash")  # the probe does see it when used
