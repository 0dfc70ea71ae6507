"""The four ways a check ends, so that each check module says only what it found."""

from __future__ import annotations

from agent.protocol.doctor import CheckResult


def passed(name: str, summary: str, details: list[str] | None = None) -> CheckResult:
    return CheckResult(name=name, verdict="pass", summary=summary, details=details or [])


def warned(name: str, summary: str, fix: str, details: list[str] | None = None) -> CheckResult:
    return CheckResult(name=name, verdict="warn", summary=summary, fix=fix, details=details or [])


def failed(name: str, summary: str, fix: str, details: list[str] | None = None) -> CheckResult:
    return CheckResult(name=name, verdict="fail", summary=summary, fix=fix, details=details or [])


def skipped(name: str, why: str) -> CheckResult:
    return CheckResult(name=name, verdict="skip", summary=why)
