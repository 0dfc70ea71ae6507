"""`envagent upgrade`: upgrade this install in place, as the platform's `upgrade` command does.

It leaves a running daemon alone: the daemon's own `upgrade` command restarts it, and a person
who upgrades by hand is told whether a daemon runs from this install, and so runs old code.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from agent.cli.common import config_flag
from agent.cli.completion import complete_path
from agent.support import exitcodes


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`envagent upgrade`'s flags (its help is in agent.cli.main, with the other commands')."""
    find_links = parser.add_argument(
        "--find-links",
        dest="upgrade_find_links",
        type=Path,
        metavar="DIR",
        help="install only from the wheels in DIR, not from the package index "
        "(default: the upgrade_find_links setting)",
    )
    complete_path(find_links, "directory")
    parser.add_argument("--dry-run", action="store_true", help="print what would run and stop")
    config_flag(parser)


def run(args: argparse.Namespace) -> int:
    from agent.cli.common import fail
    from agent.daemon.config import load_settings
    from agent.upgrade.install import Outcome, Refused, plan, upgrade

    settings = load_settings(
        {"upgrade_find_links": args.upgrade_find_links}, config_path=args.config
    ).settings
    if args.dry_run:
        try:
            steps = plan(settings.upgrade_find_links)
        except Refused as refused:
            return fail(str(refused), exitcodes.UPGRADE_REFUSED)
        print(f"would run:  {shlex.join(steps.upgrade)}\nthen check: {shlex.join(steps.check)}")
        return exitcodes.OK
    result = upgrade(settings.upgrade_find_links)
    if result.outcome is Outcome.REFUSED:
        return fail(result.message, exitcodes.UPGRADE_REFUSED)
    if not result.ok:
        return fail(result.message)
    print(result.message)
    if result.restart_needed:
        note = _running_daemon_note(settings.listener_instance_id, result.old_version)
        if note is not None:
            print(note)
    return exitcodes.OK


def _running_daemon_note(instance_id: str | None, old_version: str) -> str | None:
    """A daemon started from this install before the upgrade still runs the old code."""
    from agent.localapi.client import LocalClient
    from agent.machine.selfupdate import detect_self_update
    from agent.protocol.views import ClientError

    try:
        client = LocalClient(instance_id)
        pid = client.status()["pid"]
        (row,) = client.listing(online_only=False)["connections"]
    except (ClientError, ValueError):  # none runs, it does not answer, or it answers nonsense
        return None
    metadata = row.get("metadata")
    report = metadata.get("self_update") if metadata else None
    install_path = report.get("install_path") if report else None
    if report is None or install_path != detect_self_update().install_path:
        where = install_path or "another install"
        return f"the running daemon (pid {pid}) runs from {where}: this upgrade does not change it"
    return (
        f"the running daemon (pid {pid}) still runs {old_version} from this install: restart "
        "it to run the new version (restart its service, or stop it and start `envagent run`)"
    )
