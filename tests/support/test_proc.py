"""The one runner of outside commands, with real subprocesses: what it captures, what it passes
on, how a failure reads, and that a hang or a Ctrl-C leaves nothing of the command running."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.support import proc

PYTHON = sys.executable
WAIT_S = 5.0
"""A bound on waiting for something that takes milliseconds; never a fixed sleep."""

OUT_AND_ERR = "import sys; print('out', flush=True); print('err', file=sys.stderr); sys.exit(3)"


def python(script: str) -> list[str]:
    return [PYTHON, "-c", script]


def hang_with_a_child(pid_file: Path) -> list[str]:
    """A command that starts a child sleeping a minute, writes the child's pid, then sleeps too:
    the child holds the output pipe, so the runner returns only if the whole group is killed."""
    child = "import time; time.sleep(60)"
    return python(
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie waiting for its reaper has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def assert_ends(pid: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while running(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not running(pid), "the command's child was left running"


NEEDS_PROC = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="tells a process's end from /proc"
)


def test_exit_code_and_merged_output() -> None:
    ran = proc.run(python(OUT_AND_ERR), timeout_s=WAIT_S)

    assert (ran.code, ran.ok) == (3, False)
    assert ran.output.splitlines() == ["out", "err"]


def test_success() -> None:
    ran = proc.run(python("print('fine')"), timeout_s=WAIT_S)

    assert (ran.code, ran.ok, ran.output) == (0, True, "fine\n")


def test_stdout_only_drops_stderr() -> None:
    ran = proc.run(python(OUT_AND_ERR), timeout_s=WAIT_S, output="stdout")

    assert (ran.code, ran.output) == (3, "out\n")


def test_terminal_output_is_left_to_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    ran = proc.run(python(OUT_AND_ERR), timeout_s=WAIT_S, output="terminal")

    assert (ran.code, ran.output) == (3, "")
    assert capfd.readouterr() == ("out\n", "err\n")


def test_env_and_cwd_are_passed(tmp_path: Path) -> None:
    script = (
        "import os; print(os.environ['PROC_TEST']); print(sorted(os.environ)); print(os.getcwd())"
    )

    ran = proc.run(python(script), timeout_s=WAIT_S, cwd=tmp_path, env={"PROC_TEST": "a b"})

    value, names, cwd = ran.output.splitlines()
    assert (ran.code, value) == (0, "a b")
    assert "PATH" not in names  # the environment given, not this one plus it
    assert Path(cwd).resolve() == tmp_path.resolve()


def test_stdin_is_empty() -> None:
    ran = proc.run(python("import sys; print(repr(sys.stdin.read()))"), timeout_s=WAIT_S)

    assert ran.output == "''\n"


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    not_on_path = proc.run(["envagent-no-such-program", "--version"], timeout_s=WAIT_S)
    missing = tmp_path / "missing"
    by_path = proc.run([str(missing)], timeout_s=WAIT_S)
    not_executable = tmp_path / "plain"
    not_executable.write_text("#!/bin/sh\n")
    refused = proc.run([str(not_executable)], timeout_s=WAIT_S)
    bad_cwd = proc.run([PYTHON, "-V"], timeout_s=WAIT_S, cwd=missing)

    assert {ran.code for ran in (not_on_path, by_path, refused, bad_cwd)} == {proc.NOT_STARTED}
    assert not_on_path.problem == "envagent-no-such-program is not installed here (not on PATH)"
    assert by_path.problem == f"cannot start {missing}: No such file or directory"
    assert refused.problem == f"cannot start {not_executable}: Permission denied"
    assert bad_cwd.problem == f"cannot start {PYTHON}: {missing}: No such file or directory"


def test_a_failure_names_the_last_lines_of_its_output() -> None:
    """The last lines, where a traceback or an installer says what failed."""
    argv = python(
        "import sys\n"
        "for line in ('first', '', '  second  '): print(line, flush=True)\n"
        "print('third', file=sys.stderr, flush=True); print('fourth'); sys.exit(2)"
    )
    ran = proc.run(argv, timeout_s=WAIT_S)
    quiet = proc.run(python("raise SystemExit(4)"), timeout_s=WAIT_S)
    traceback = proc.run(python("raise RuntimeError('broken on purpose')"), timeout_s=WAIT_S)

    assert ran.problem == f"`{shlex.join(argv)}` exited 2: second / third / fourth"
    assert quiet.problem.endswith("` exited 4")
    assert traceback.problem.endswith(" in <module> / RuntimeError: broken on purpose")


def test_a_killed_command_says_by_which_signal() -> None:
    ran = proc.run(
        python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), timeout_s=WAIT_S
    )

    assert ran.code == -signal.SIGKILL
    assert ran.problem.endswith(f"` was killed by signal {int(signal.SIGKILL)}")


@NEEDS_PROC
def test_a_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    argv = hang_with_a_child(pid_file)

    started = time.monotonic()
    ran = proc.run(argv, timeout_s=1.0)

    assert time.monotonic() - started < WAIT_S  # the child held the pipe: it was killed too
    assert (ran.code, ran.ok, ran.output) == (None, False, "started\n")
    assert ran.problem == f"`{shlex.join(argv)}` did not finish within 1 s: started"
    assert_ends(int(pid_file.read_text()))


@NEEDS_PROC
def test_ctrl_c_kills_the_whole_group_of_an_unbounded_command(tmp_path: Path) -> None:
    """`timeout_s=None` (following a log) ends with Ctrl-C, and so does all it started."""
    pid_file = tmp_path / "child.pid"

    def interrupt_once_started() -> None:
        deadline = time.monotonic() + WAIT_S
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    interrupter = threading.Thread(target=interrupt_once_started)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            proc.run(hang_with_a_child(pid_file), timeout_s=None, output="terminal")
    finally:
        interrupter.join()
    assert_ends(int(pid_file.read_text()))
