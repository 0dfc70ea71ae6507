"""Run every check in order, each later one skipped when one it needs has failed."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

from agent import __version__
from agent.daemon.commands import Commands
from agent.daemon.config import LoadedSettings, Platform, render_settings
from agent.daemon.lock import EMBEDDED
from agent.daemon.session.route import Route, UnusableProxy
from agent.daemon.state import DaemonState, StateStore, state_path
from agent.doctor.local import check_lock, check_service
from agent.doctor.machine import check_git, check_node, check_self_update
from agent.doctor.network import Hops, check_dns, check_proxy, check_tcp, check_tls
from agent.doctor.platform import (
    Registered,
    check_clock,
    check_registration,
    check_websocket,
    doctor_request,
)
from agent.doctor.results import failed, passed, skipped
from agent.machine.metadata import MetadataCollector
from agent.protocol.doctor import CheckResult, DoctorReport
from agent.protocol.models import RegisterRequest
from agent.support.files import UnusableFile, private_dir
from agent.support.paths import state_dir
from agent.support.tls import CAFileError, client_trust

NETWORK_CHECKS = ("dns", "tcp", "proxy", "tls", "registration", "websocket", "clock")
CHECKS = ("settings", "state", *NETWORK_CHECKS, "node", "git", "self_update", "service", "lock")
"""Every check, in the order they run and are shown."""


async def diagnose(loaded: LoadedSettings) -> DoctorReport:
    settings = loaded.settings
    checks = [_settings_check(loaded)]
    state = await _state(settings.listener_instance_id, checks)
    collector = MetadataCollector(
        settings.workdir, settings.client_version or __version__, Commands.NAMES
    )
    metadata = await collector.collect()
    if state is None:
        checks += [skipped(name, "needs the state file's device id") for name in NETWORK_CHECKS]
    elif settings.base_url is None:
        why = "no base URL: the daemon starts its own reference platform on loopback"
        checks += [skipped(name, why) for name in NETWORK_CHECKS]
    elif settings.api_key is None:
        checks += [skipped(name, "needs an API key (see settings)") for name in NETWORK_CHECKS]
    else:
        platform = Platform(settings.base_url, settings.api_key.get_secret_value(), False)
        name = settings.name or socket.gethostname()
        mode = settings.mode or state.mode
        request = doctor_request(state.device_id, name, metadata, mode, settings.source)
        checks += await _network(platform, loaded, request)
    assert metadata.self_update is not None, "the collector always answers self_update"
    checks += [check_node(collector.node), check_git(metadata)]
    checks.append(check_self_update(metadata.self_update))
    checks.append(await asyncio.to_thread(check_service))
    if state is None:
        checks.append(skipped("lock", "needs the state file's device id"))
    else:
        platform_id = settings.base_url or EMBEDDED
        instance = settings.listener_instance_id
        checks.append(await asyncio.to_thread(check_lock, platform_id, state.device_id, instance))
    return _report(checks)


async def _state(instance: str | None, checks: list[CheckResult]) -> DaemonState | None:
    """The state the daemon would load (made as the daemon would make it, the first time)."""
    try:
        await asyncio.to_thread(private_dir, state_dir())
        state = await asyncio.to_thread(StateStore(state_path(instance)).load)
    except UnusableFile as exc:
        checks.append(failed("state", str(exc), "fix the path named, then run the doctor again"))
        return None
    checks.append(passed("state", f"device id {state.device_id}"))
    return state


def unusable_settings(message: str) -> DoctorReport:
    """The report when the settings themselves are refused: every other check needs them."""
    fix = "correct the setting named (envagent config show lists each and where it came from)"
    later = [skipped(name, "needs valid settings") for name in CHECKS[1:]]
    return _report([failed("settings", message, fix), *later])


async def _network(
    platform: Platform, loaded: LoadedSettings, request: RegisterRequest
) -> list[CheckResult]:
    """The way to the platform, then what it answers; a hop that fails skips what needs it."""
    try:
        trust = client_trust(loaded.settings.ca_file)
        ca_problem = None
    except CAFileError as exc:
        # The hops before TLS are still worth checking, with the store used when none is named.
        trust, ca_problem = client_trust(None, environ={}), str(exc)
    route = Route(lambda: trust)
    try:
        proxy, ws_proxy = route.proxy(platform.url), route.proxy(_as_websocket(platform.url))
    except UnusableProxy as exc:
        fix = "set HTTPS_PROXY to an http:// or https:// proxy, or unset it"
        needs = [skipped(name, "needs a usable proxy") for name in ("dns", "tcp")]
        return [*needs, failed("proxy", str(exc), fix), *_skip_after("proxy")]
    hops = Hops.to(platform.url, proxy)
    steps: tuple[Callable[[], Awaitable[CheckResult]], ...] = (
        lambda: check_dns(hops),
        lambda: check_tcp(hops),
        lambda: check_proxy(hops, ws_proxy),
    )
    results: list[CheckResult] = []
    for step in steps:
        results.append(await step())
        if _failed(results[-1]):
            return results + _skip_after(results[-1].name)
    if ca_problem is not None:
        results.append(failed("tls", ca_problem, "name a readable PEM file of CA certificates"))
        return results + _skip_after("tls")
    results.append(await check_tls(hops, trust))
    if _failed(results[-1]):
        return results + _skip_after("tls")
    found = Registered()
    key_source = loaded.sources["api_key"]
    results.append(await check_registration(platform, route, request, key_source, found))
    results.append(await check_websocket(platform, route, request, found))
    results.append(check_clock(found))
    return results


def _failed(result: CheckResult) -> bool:
    return result.verdict == "fail"


def _skip_after(name: str) -> list[CheckResult]:
    later = NETWORK_CHECKS[NETWORK_CHECKS.index(name) + 1 :]
    return [skipped(check, f"needs {name} (failed above)") for check in later]


def _as_websocket(url: str) -> str:
    """The socket's URL as the platform will most likely give it: its wsUrl comes only with
    registration, on the same host as a rule."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme="wss" if parts.scheme == "https" else "ws"))


def _settings_check(loaded: LoadedSettings) -> CheckResult:
    settings, sources = loaded.settings, loaded.sources
    read = "read" if loaded.config_file.exists() else "absent"
    given = [
        line for line in render_settings(loaded).splitlines() if not line.endswith("(default)")
    ]
    details = [
        f"config file {loaded.config_file} ({read})",
        *(given or ["every setting at its default"]),
    ]
    if settings.base_url is None:
        return passed("settings", "no base URL: the embedded reference platform", details)
    if settings.api_key is None:
        return failed(
            "settings",
            f"no API key for {settings.base_url} ({sources['base_url']})",
            "set LETTA_API_KEY, or api_key in the config file",
            details,
        )
    return passed(
        "settings",
        f"{settings.base_url} ({sources['base_url']}), key from {sources['api_key']}",
        details,
    )


def _report(checks: list[CheckResult]) -> DoctorReport:
    return DoctorReport(ok=not any(_failed(check) for check in checks), checks=checks)
