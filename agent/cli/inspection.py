"""The commands that look at the running daemon, this machine or the platform's listing:
`status`, `list`, `mode`, `metadata`, `config show`. They load neither the daemon's run loop nor
the service code, and the platform's client only for what asks the platform (`list
--platform`, `status --verify`): coding tools call them often."""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from agent import __version__
from agent.cli.common import fail
from agent.cli.settings import load_cli_settings
from agent.daemon.config import Settings, render_settings
from agent.localapi.client import LocalClient, NoDaemon
from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.protocol.httpapi import ClientError
from agent.protocol.models import DaemonStatus, EnvironmentRow, StoppedStatus, parse_mode
from agent.support import exitcodes
from agent.support.clock import now_ms
from agent.support.files import UnusableFile, private_dir
from agent.support.paths import state_dir

if TYPE_CHECKING:
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


def _local_client(settings: Settings) -> LocalClient:
    """The running daemon's local API, found through files in a state folder that must be this
    user's alone: another user could plant the address or token there."""
    private_dir(state_dir(), create=False)
    return LocalClient(settings.listener_instance_id)


# --- status ------------------------------------------------------------------------------------


@_one_line_for_unusable_files
def status_command(args: argparse.Namespace) -> int:
    loaded = load_cli_settings(args)
    try:
        client = _local_client(loaded.settings)
    except NoDaemon as exc:
        if not args.json or args.verify:
            raise
        return _print_stopped(exc)
    status = client.status()
    if args.verify:
        return _verify(client, _platform_client(loaded.settings, status))
    if args.json:
        print(json.dumps(status.to_wire(), indent=2))
    else:
        print(_describe_status(status))
    return exitcodes.OK


def _print_stopped(why: NoDaemon) -> int:
    """`status --json` with no daemon: still JSON, with the running daemon's `state` key, so
    that a tool reads one shape; the exit code stays ERROR, as for the human line."""
    print(json.dumps(StoppedStatus(reason=str(why)).to_wire(), indent=2))
    return exitcodes.ERROR


def _describe_status(status: DaemonStatus) -> str:
    beats = status.heartbeats
    node = status.node
    rows = [
        ("state", status.state),
        ("platform", status.platform_url + (" (embedded)" if status.embedded_platform else "")),
        ("name", status.connection_name),
        ("device", status.device_id),
        ("connection", status.connection_id or "-"),
        ("mode", status.mode),
        ("workdir", status.working_directory),
        (
            "heartbeats",
            f"{beats.sent} sent, {beats.answered} answered, {beats.unanswered_now} unanswered "
            f"now (every {status.heartbeat_period_s:g} s)",
        ),
        ("last error", status.last_error or "-"),
        ("node", f"{node.version} ({node.found_via}: {node.path})" if node and node.path else "-"),
        ("process", _describe_process(status)),
        ("local API", status.local_api),
        ("log", status.log_path or "stderr"),
    ]
    return "\n".join(f"{label:<11} {value}" for label, value in rows)


def _describe_process(status: DaemonStatus) -> str:
    """The pid and uptime, and what the process costs when the daemon measured it."""
    line = f"pid {status.pid}, up {status.uptime_s:.0f} s"
    process = status.process
    if process is None:  # a daemon older than the process block
        return line
    return (
        f"{line}, RSS {process.rss_bytes / 2**20:.1f} MiB, CPU {process.cpu_seconds:.2f} s, "
        f"{process.open_files} open files, {process.threads} threads"
    )


def _platform_client(settings: Settings, status: DaemonStatus | None) -> PlatformClient:
    """The platform the daemon uses, with the key it uses."""
    from agent.platform.client import PlatformClient

    if settings.base_url is not None:
        if settings.api_key is None:
            raise ClientError(f"no API key for {settings.base_url}: set LETTA_API_KEY")
        key = settings.api_key.get_secret_value()
        return PlatformClient(settings.base_url, key, ca_file=settings.ca_file)
    if status is None or not status.embedded_platform:
        raise ClientError("no platform configured (set LETTA_BASE_URL) and no daemon running")
    from agent.daemon.embedded import embedded_key_file

    key_file = embedded_key_file(settings.listener_instance_id)
    try:
        key = key_file.read_text().strip()
    except OSError as exc:
        raise ClientError(f"cannot read the development key {key_file}: {exc.strerror}") from None
    return PlatformClient(status.platform_url, key, proxied=False)


def _verify(client: LocalClient, platform: PlatformClient) -> int:
    from agent.platform.client import differences, find_own_row

    local_rows = client.listing(online_only=False).connections
    if not local_rows:
        return fail("the daemon lists no row of its own")
    local = local_rows[0]
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
    loaded = load_cli_settings(args)
    if args.local:
        rows = _local_client(loaded.settings).listing(args.online_only)
        found = rows.connections
    else:
        status = None
        if loaded.settings.base_url is None:
            status = _local_client(loaded.settings).status()
        platform = _platform_client(loaded.settings, status)
        found = list(platform.pages(args.online_only))
    if args.json:
        print(json.dumps([row.to_wire() for row in found], indent=2))
    else:
        print(render_table(found, now_ms()))
    return exitcodes.OK


def render_table(rows: list[EnvironmentRow], now: int) -> str:
    header = ("NAME", "ONLINE", "MODE", "OS", "BRANCH", "WORKDIR", "HEARTBEAT", "DEVICE")
    lines = [header]
    for row in rows:
        meta = row.metadata
        age = f"{(now - row.last_heartbeat) / 1000:.0f} s ago" if row.last_heartbeat else "never"
        lines.append(
            (
                row.connection_name,
                "yes" if row.is_online(now, ONLINE_WINDOW_MS) else "no",
                row.current_mode or "-",
                (meta.os if meta else None) or "-",
                (meta.git_branch if meta else None) or "-",
                (meta.working_directory if meta else None) or "-",
                age,
                row.device_id,
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
    client = _local_client(load_cli_settings(args).settings)
    if args.mode_command == "set":  # the parser took only a known mode: this types it
        print(client.set_mode(parse_mode(args.value)))
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
    loaded = load_cli_settings(args)
    print(
        f"# config file: {loaded.config_file}" + ("" if loaded.config_file.exists() else " (none)")
    )
    print(render_settings(loaded))
    return exitcodes.OK
