"""`envagent run`: the daemon in this process, or (`--attach`) the address of the one that
already serves this identity."""

from __future__ import annotations

import argparse
import asyncio
import time

from agent import __version__
from agent.cli.common import fail
from agent.cli.settings import load_cli_settings
from agent.daemon.config import announce_implied_base_url
from agent.daemon.core import Daemon
from agent.daemon.embedded import embedded_key_file
from agent.daemon.lock import AlreadyRunning, read_holder
from agent.daemon.restart import restart_in_place, service_exit_code, under_service_manager
from agent.localapi.routes import PortUnavailable
from agent.support import exitcodes
from agent.support.files import UnusableFile
from agent.support.logs import register_secret, setup_logging

ATTACH_WAIT_S = 5.0


# --- run ---------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> int:
    loaded = load_cli_settings(args)
    settings = loaded.settings
    try:
        human = True if args.foreground else None  # else as suits where stderr goes
        setup_logging(debug=settings.debug, human=human, log_file=settings.log_file)
        announce_implied_base_url(loaded)
        if settings.api_key is not None:
            register_secret(settings.api_key.get_secret_value())
        daemon = Daemon(settings, parent_pid=args.parent_pid, on_ready=_banner)
        code = asyncio.run(daemon.run())
    except AlreadyRunning as held:
        if args.attach:
            return _attach(held)
        return service_exit_code(fail(f"{held}; use --attach to use it", exitcodes.ALREADY_RUNNING))
    except UnusableFile as exc:  # launchd would only restart into the same refusal
        return service_exit_code(fail(str(exc), exitcodes.FILES))
    except PortUnavailable as exc:
        return fail(str(exc))
    if code == exitcodes.RESTART and not under_service_manager():
        restart_in_place()
    return service_exit_code(code)


def _attach(held: AlreadyRunning) -> int:
    """Print the running daemon's local API; it may still be starting, so wait a little."""
    deadline = time.monotonic() + ATTACH_WAIT_S
    holder = held.holder
    while (holder is None or holder.local_api is None) and time.monotonic() < deadline:
        time.sleep(0.05)
        holder = read_holder(held.path)
    if holder is None or holder.local_api is None:
        return fail(f"{held}, but it has no local API yet", exitcodes.ALREADY_RUNNING)
    print(holder.local_api)
    return exitcodes.OK


def _banner(daemon: Daemon) -> None:
    """The lines a person needs to check what the platform sees, printed once at start."""
    status = daemon.status(measure_process=False)  # psutil stays unloaded until asked for
    platform = daemon.platform
    key_file = embedded_key_file(daemon.settings.listener_instance_id)
    auth = f"$(cat {key_file})" if platform.embedded else "$LETTA_API_KEY"
    where = " (embedded reference platform)" if platform.embedded else ""
    print(
        f"envagent {__version__}: {status.connection_name} (device {status.device_id}), "
        f"mode {status.mode}, serving {status.working_directory}\n"
        f"  platform listing: {platform.url}/v1/environments{where}\n"
        f"  local listing:    {status.local_api}/v1/environments\n"
        f'  try: curl -H "Authorization: Bearer {auth}" {platform.url}/v1/environments',
        flush=True,
    )
