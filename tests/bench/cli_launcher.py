"""Run commands one after another, each timed from fork to reaping, with its peak RSS from the
kernel; run by `cli_speed` as `python -I -S cli_launcher.py SPEC.json` (the standard library
only), which prints the results as JSON.

Why a process of its own: Linux carries a process's peak RSS across exec (exec folds the old
memory map's high-water mark into it), so a command forked from the benchmark, a 70 MiB process,
would report at least 70 MiB. Forked from this small one, a command reports its own peak unless
that is below this process's, the floor, measured here with /bin/true and printed beside.

SPEC: {"rounds": N, "warm_up": N, "timeout_s": S, "cwd": PATH, "commands": [{"label": L,
"argv": [...], "env": {...}, "log": PATH with "{round}"}]}. Every round runs every command once,
in order. Each runs in a session of its own, which is killed after it (whatever it left) or at
its timeout. Output: {"floor_kib": K, "runs": {L: [[ms, max_rss_kib], ...]}, "failed": null or
{"label": L, "code": C, "log": PATH}}; the first command that fails ends the rounds.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time

TRUE = "/bin/true"


def run_once(
    argv: list[str], env: dict[str, str], cwd: str, log: str, timeout_s: float
) -> tuple[float, int, int]:
    """(milliseconds, peak RSS in KiB, exit code) of one run."""
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: as little as possible between fork and exec
        try:
            os.setsid()
            os.chdir(cwd)
            os.dup2(null, 0)
            os.dup2(output, 1)
            os.dup2(output, 2)
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    os.close(output)
    os.close(null)
    try:
        watch = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(watch, select.POLLIN)
        if not poller.poll(timeout_s * 1000):
            _kill_group(pid)
        os.close(watch)
        _, status, usage = os.wait4(pid, 0)
        ended = time.perf_counter()
    finally:
        _kill_group(pid)  # whatever it left in its session
    return (ended - started) * 1000, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def main(spec_path: str) -> int:
    with open(spec_path) as spec_file:
        spec = json.load(spec_file)
    commands, timeout_s, cwd = spec["commands"], spec["timeout_s"], spec["cwd"]
    runs: dict[str, list[list[float]]] = {command["label"]: [] for command in commands}
    failed = None
    for index in range(-spec["warm_up"], spec["rounds"]):
        for command in commands:
            log = command["log"].format(round=index)
            ms, rss, code = run_once(command["argv"], command["env"], cwd, log, timeout_s)
            if code != 0:
                failed = {"label": command["label"], "code": code, "log": log}
                break
            if index >= 0:
                runs[command["label"]].append([ms, rss])
        if failed:
            break
    # The floor: the peak of /bin/true, which is this process's own high-water mark by now.
    _, floor, _ = run_once([TRUE], {}, cwd, os.devnull, timeout_s)
    json.dump({"floor_kib": floor, "runs": runs, "failed": failed}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
