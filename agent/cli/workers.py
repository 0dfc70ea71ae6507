"""`envagent platform serve --workers N`: N pods on one port, each a process of its own.

The kernel spreads new connections over the processes that listen on a port with
SO_REUSEPORT; the pods share their PostgreSQL database, which routes frames between them. This
process only supervises: it holds the port (bound, not listening) so that no other program
takes it while the pods start, passes a stop on to every pod, and when one pod ends on its own,
stops the others and exits with its code, so that a service manager restarts them all.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator

from agent.cli.common import fail
from agent.support import exitcodes

DATABASE_URL_VARIABLE = "ENVAGENT_DATABASE_URL"
"""How the pods get the database URL: not in their command line, which others may read."""
STOP_WAIT_S = 10.0


def run_workers(args: argparse.Namespace, database_url: str) -> int:
    try:
        with _held_port(args.host, args.port) as port:
            return asyncio.run(_supervise(args, database_url, port))
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")


@contextlib.contextmanager
def _held_port(host: str, port: int) -> Iterator[int]:
    """The port (a free one for 0), bound with SO_REUSEPORT for as long as the pods run."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as held:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, port))
        yield held.getsockname()[1]


def _pod_command(args: argparse.Namespace, port: int, pod_id: str) -> list[str]:
    return [
        sys.executable, "-m", "agent", "platform", "serve", "--reuse-port",
        "--host", args.host, "--port", str(port), "--pod-id", pod_id,
        "--heartbeat-ms", str(args.heartbeat_ms),
        "--online-window-ms", str(args.online_window_ms),
        "--transport-ping-s", str(args.transport_ping_s),
        "--max-body-bytes", str(args.max_body_bytes),
        "--max-frame-bytes", str(args.max_frame_bytes),
        "--pod-heartbeat-s", str(args.pod_heartbeat_s),
        "--pod-fence-after-s", str(args.pod_fence_after_s),
        "--log-format", args.log_format,
        *(["--debug"] if args.debug else []),
        *(["--tls-cert", str(args.tls_cert.absolute())] if args.tls_cert else []),
        *(["--tls-key", str(args.tls_key.absolute())] if args.tls_key else []),
    ]  # fmt: skip


async def _supervise(args: argparse.Namespace, database_url: str, port: int) -> int:
    base = args.pod_id or f"{socket.gethostname()}-{os.getpid()}"
    environment = {**os.environ, DATABASE_URL_VARIABLE: database_url}
    pods = [
        await asyncio.create_subprocess_exec(
            *_pod_command(args, port, f"{base}-{n}"),
            env=environment,
            stdin=asyncio.subprocess.DEVNULL,
        )
        for n in range(1, args.workers + 1)
    ]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    ended = [asyncio.create_task(pod.wait()) for pod in pods]
    stop = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([*ended, stop], return_when=asyncio.FIRST_COMPLETED)
    code = exitcodes.OK
    if stop not in done:
        first = next(task for task in ended if task in done)
        code = first.result() or exitcodes.ERROR
        print(
            f"envagent: a platform pod exited with {first.result()}: stopping all", file=sys.stderr
        )
    stop.cancel()
    for pod in pods:
        if pod.returncode is None:
            pod.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_WAIT_S):
            await asyncio.gather(*ended)
    except TimeoutError:
        for pod in pods:
            if pod.returncode is None:
                pod.kill()
        await asyncio.gather(*ended)
    return code
