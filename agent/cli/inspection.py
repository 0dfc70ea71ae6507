"""The commands that look at the running daemon, this machine or the platform's listing:
`status`, `list`, `mode`, `metadata`, `config show`. They load neither the daemon's run loop nor
the service code, and the platform's client only for what asks the platform (`list
--platform`, `status --verify`): coding tools call them often."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from agent import __version__
from agent.cli.common import fail
from agent.cli.settings import instance_id, load_cli_settings
from agent.localapi.client import LocalClient, NoDaemon
from agent.protocol.constants import ONLINE_WINDOW_MS, is_online
from agent.protocol.views import (
    ClientError,
    DaemonStatusView,
    EnvironmentRowView,
    StoppedStatusView,
)
from agent.support import exitcodes
from agent.support.clock import now_ms
from agent.support.files import UnusableFile, private_dir
from agent.support.paths import state_dir

if TYPE_CHECKING:
    from agent.daemon.config import Settings
    from agent.platform.client import PlatformClient

Command = Callable[[argparse.Namespace], int]


def _one_line_for_unusable_files(command: Command) -> Command:
    """A file or folder envagent cannot trust or use ends `command` with the one line naming it
    and FILES, not a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except UnusableFile as exc:
            return fail(str(exc), exitcodes.FILES)

    return run


def _local_client(instance: str | None) -> LocalClient:
    """The running daemon's local API, found through files in a state folder that must be this
    user's alone: another user could plant the address or token there."""
    private_dir(state_dir(), create=False)
    return LocalClient(instance)


# --- status ------------------------------------------------------------------------------------


@_one_line_for_unusable_files
def status_command(args: argparse.Namespace) -> int:
    if args.verify:  # asks the platform too: the whole settings, its key among them
        settings = load_cli_settings(args).settings
        client = _local_client(settings.listener_instance_id)
        return _verify(client, _platform_client(settings, client.status()))
    try:
        client = _local_client(instance_id(args))
    except NoDaemon as exc:
        if not args.json:
            raise
        return _print_stopped(exc)
    status = client.status()
    if args.json:  # the daemon's answer as it sent it, indented
        print(json.dumps(status, indent=2))
    else:
        print(_describe_status(status))
    return exitcodes.OK


def _print_stopped(why: NoDaemon) -> int:
    """`status --json` with no daemon: still JSON, with the running daemon's `state` key, so
    that a tool reads one shape; the exit code stays ERROR, as for the human line."""
    stopped: StoppedStatusView = {"state": "stopped", "reason": str(why)}
    print(json.dumps(stopped, indent=2))
    return exitcodes.ERROR


def _describe_status(status: DaemonStatusView) -> str:
    beats = status["heartbeats"]
    node = status["node"]
    rows = [
        ("state", status["state"]),
        (
            "platform",
            status["platformUrl"] + (" (embedded)" if status["embeddedPlatform"] else ""),
        ),
        ("name", status["connectionName"]),
        ("device", status["deviceId"]),
        ("connection", status["connectionId"] or "-"),
        ("mode", status["mode"]),
        ("workdir", status["workingDirectory"]),
        (
            "heartbeats",
            f"{beats['sent']} sent, {beats['answered']} answered, {beats['unansweredNow']} "
            f"unanswered now (every {status['heartbeatPeriodS']:g} s)",
        ),
        ("last error", status["lastError"] or "-"),
        (
            "node",
            f"{node['version']} ({node['foundVia']}: {node['path']})"
            if node and node["path"]
            else "-",
        ),
        ("process", _describe_process(status)),
        ("local API", status["localApi"]),
        ("log", status["logPath"] or "stderr"),
    ]
    return "\n".join(f"{label:<11} {value}" for label, value in rows)


def _describe_process(status: DaemonStatusView) -> str:
    """The pid and uptime, and what the process costs when the daemon measured it."""
    line = f"pid {status['pid']}, up {status['uptimeS']:.0f} s"
    process = status.get("process")
    if process is None:  # a daemon older than the process block
        return line
    return (
        f"{line}, RSS {process['rssBytes'] / 2**20:.1f} MiB, CPU {process['cpuSeconds']:.2f} s, "
        f"{process['openFiles']} open files, {process['threads']} threads"
    )


def _platform_client(settings: Settings, status: DaemonStatusView | None) -> PlatformClient:
    """The platform the daemon uses, with the key it uses."""
    from agent.platform.client import PlatformClient

    if settings.base_url is not None:
        if settings.api_key is None:
            raise ClientError(f"no API key for {settings.base_url}: set LETTA_API_KEY")
        key = settings.api_key.get_secret_value()
        return PlatformClient(settings.base_url, key, ca_file=settings.ca_file)
    if status is None or not status["embeddedPlatform"]:
        raise ClientError("no platform configured (set LETTA_BASE_URL) and no daemon running")
    from agent.daemon.embedded import embedded_key_file

    key_file = embedded_key_file(settings.listener_instance_id)
    try:
        key = key_file.read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read the development key {key_file}: {exc.strerror}") from None
    return PlatformClient(status["platformUrl"], key, proxied=False)


def _verify(client: LocalClient, platform: PlatformClient) -> int:
    from agent.platform.client import differences, find_own_row
    from agent.protocol.models import EnvironmentRow

    local_rows = client.listing(online_only=False)["connections"]
    if not local_rows:
        return fail("the daemon lists no row of its own")
    local = EnvironmentRow.model_validate(local_rows[0])
    remote = find_own_row(platform.pages(online_only=False), local)
    if remote is None:
        return fail(f"the platform {platform.url} has no row for device {local.device_id}")
    found = differences(local, remote)
    for line in found:
        print(line)
    if found:
        return fail(f"{len(found)} field(s) differ between the daemon and the platform")
    print(f"the platform's row {remote.id} matches what the daemon holds")
    return exitcodes.OK


# --- list --------------------------------------------------------------------------------------


@_one_line_for_unusable_files
def list_command(args: argparse.Namespace) -> int:
    rows: list[EnvironmentRowView]
    if args.local:  # the rows as the daemon sent them
        rows = _local_client(instance_id(args)).listing(args.online_only)["connections"]
    else:
        settings = load_cli_settings(args).settings
        status = None
        if settings.base_url is None:
            status = _local_client(settings.listener_instance_id).status()
        platform = _platform_client(settings, status)
        rows = [cast(EnvironmentRowView, row.to_wire()) for row in platform.pages(args.online_only)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(render_table(rows, now_ms()))
    return exitcodes.OK


def render_table(rows: Sequence[EnvironmentRowView], now: int) -> str:
    """The rows of a listing, the platform's or the daemon's, as a table for people."""
    header = ("NAME", "ONLINE", "MODE", "OS", "BRANCH", "WORKDIR", "HEARTBEAT", "DEVICE")
    lines = [header]
    for row in rows:
        meta = row.get("metadata") or {}
        last = row["lastHeartbeat"]
        age = f"{(now - last) / 1000:.0f} s ago" if last else "never"
        lines.append(
            (
                row["connectionName"],
                "yes" if is_online(row["connectionId"], last, now, ONLINE_WINDOW_MS) else "no",
                row.get("currentMode") or "-",
                meta.get("os") or "-",
                meta.get("gitBranch") or "-",
                meta.get("workingDirectory") or "-",
                age,
                row["deviceId"],
            )
        )
    widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
    table = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    if not rows:
        table.append("(no environments)")
    return "\n".join(table)


# --- mode, metadata, config --------------------------------------------------------------------


@_one_line_for_unusable_files
def mode_command(args: argparse.Namespace) -> int:
    client = _local_client(instance_id(args))
    if args.mode_command == "set":  # the parser took only a known mode
        print(client.set_mode(args.value))
    else:
        print(client.get_mode())
    return exitcodes.OK


def metadata_command(args: argparse.Namespace) -> int:
    from agent.daemon.commands import Commands
    from agent.machine.metadata import MetadataCollector

    settings = load_cli_settings(args).settings
    collector = MetadataCollector(
        settings.workdir, settings.client_version or __version__, Commands.NAMES
    )
    print(json.dumps(collector.collect_now().to_wire(), indent=2))
    return exitcodes.OK


def config_command(args: argparse.Namespace) -> int:
    from agent.daemon.config import render_settings

    loaded = load_cli_settings(args)
    print(
        f"# config file: {loaded.config_file}" + ("" if loaded.config_file.exists() else " (none)")
    )
    print(render_settings(loaded))
    return exitcodes.OK
