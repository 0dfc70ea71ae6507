"""One pytest run a mutant, forked from a process that has already imported the libraries.

Starting pytest and importing aiohttp, pydantic, httpx... for each of hundreds of mutants costs
far more than the tests of a pure module. So `run.py` starts `serve` once, in the copy of the
tree: it imports everything that collecting the module's tests imports, except this project's
own modules (`agent`, `tests`), which must be read again from disk, mutated, by each run. The
test command cosmic-ray runs for a mutant is then `client`, which hands its arguments and its
standard streams to the server; the server forks, the child runs `pytest.main` and the client
exits with its exit code. Where the server cannot be reached, the client runs pytest itself.

Only the standard library is imported at the top: the client must start fast.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence

OWN = ("agent", "tests", "__main__")
CHILD_TIMEOUT_S = 280.0
"""A run still going after this is killed (pytest-timeout stops a test after 60 s before)."""


def serve(address: str, pytest_args: Sequence[str]) -> None:
    """Preload what collecting `pytest_args` imports, then fork a pytest run per request."""
    sys.dont_write_bytecode = True  # a mutant changes a file within the second: never a stale .pyc
    for name in _imported_by_collection(pytest_args):
        try:
            __import__(name)
        except Exception:  # one that cannot be preloaded is imported by the run itself
            continue
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(address)
        server.listen(1)
        while True:
            connection, _ = server.accept()
            with connection:
                message, fds, _, _ = socket.recv_fds(connection, 1 << 16, 3)
                args = json.loads(message)
                if args is None:
                    return
                code = _fork_pytest(server, args, fds)
                connection.sendall(str(code).encode())


def _imported_by_collection(pytest_args: Sequence[str]) -> list[str]:
    """The modules, other than this project's, that collecting the tests imports (in a child,
    so that this process imports nothing of the project)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        pytest.main(["--collect-only", "-q", *pytest_args])
        names = [name for name in list(sys.modules) if not name.startswith(OWN)]
        with os.fdopen(write, "w") as pipe:
            json.dump(names, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return [name for name in json.loads(text or "[]") if not name.startswith(OWN)]


def _fork_pytest(server: socket.socket, args: list[str], fds: list[int]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: the client's streams, then pytest
        server.close()
        for fd, standard in zip(fds, (0, 1, 2), strict=False):
            os.dup2(fd, standard)
        import pytest

        code = pytest.main(args)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code))
    for fd in fds:
        os.close(fd)
    watch = os.pidfd_open(pid)  # readable once the child has exited
    try:
        exited = select.select([watch], [], [], CHILD_TIMEOUT_S)[0]
    finally:
        os.close(watch)
    if not exited:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return 1
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def client(address: str, pytest_args: Sequence[str]) -> int:
    """Run pytest with `pytest_args` in the server's fork; in this process if it cannot."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.connect(address)
            socket.send_fds(connection, [json.dumps(list(pytest_args)).encode()], [0, 1, 2])
            answer = connection.recv(64)
        return int(answer)
    except (OSError, ValueError) as exc:
        print(f"fork server unreachable ({exc}): running pytest here", file=sys.stderr)
        import pytest

        return int(pytest.main(list(pytest_args)))


def stop(address: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(address)
        socket.send_fds(connection, [b"null"], [])


def main(argv: Sequence[str]) -> int:
    """`serve ADDRESS PYTEST_ARGS...` or `client ADDRESS PYTEST_ARGS...`."""
    role, address, *pytest_args = argv
    if role == "serve":
        serve(address, pytest_args)
        return 0
    return client(address, pytest_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
