"""`envagent doctor`: run every check (agent.doctor) and show the verdicts, or the JSON report."""

from __future__ import annotations

import argparse
import asyncio

from agent.cli.common import printable
from agent.cli.settings import load_cli_settings
from agent.daemon.config import ConfigError
from agent.doctor.run import diagnose, unusable_settings
from agent.protocol.doctor import CheckResult, DoctorReport
from agent.support import exitcodes

_WIDTH = max(len(name) for name in ("self_update", "registration", "websocket"))


def doctor_command(args: argparse.Namespace) -> int:
    try:
        loaded = load_cli_settings(args)
    except ConfigError as exc:
        report = unusable_settings(str(exc))
    else:
        report = asyncio.run(diagnose(loaded))
    if args.json:
        print(report.model_dump_json(indent=2))
    else:
        print(_human(report, verbose=args.verbose))
    return exitcodes.OK if report.ok else exitcodes.ERROR


def _human(report: DoctorReport, *, verbose: bool) -> str:
    lines = [_line(check, verbose) for check in report.checks]
    counts = {verdict: 0 for verdict in ("fail", "warn")}
    for check in report.checks:
        counts[check.verdict] = counts.get(check.verdict, 0) + 1
    lines.append(
        f"{len(report.checks)} checks: {counts['fail']} failed, {counts['warn']} with a warning"
    )
    return "\n".join(lines)


def _line(check: CheckResult, verbose: bool) -> str:
    indent = " " * (len("PASS ") + _WIDTH + 2)
    lines = [f"{check.verdict.upper():4} {check.name:<{_WIDTH}}  {printable(check.summary)}"]
    if check.fix:
        lines.append(f"{indent}fix: {printable(check.fix)}")
    if verbose or check.verdict in ("fail", "warn") or check.name == "settings":
        lines += [f"{indent}{printable(detail)}" for detail in check.details]
    return "\n".join(lines)
