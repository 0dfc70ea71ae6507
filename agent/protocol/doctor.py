"""`envagent doctor --json`: the report tools read, one model per shape as everywhere else."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

Verdict = Literal["pass", "warn", "fail", "skip"]
"""`warn`: works, but not as well as it could (no node found, no service installed); `skip`: not
applicable here, or an earlier check it needs has failed (the summary says which)."""


class CheckResult(BaseModel):
    """One check: what was found in one line, and, unless it passed, what to do about it."""

    name: str
    verdict: Verdict
    summary: str
    fix: str | None = None
    details: list[str] = []


class DoctorReport(BaseModel):
    ok: bool
    """True when no check failed: `envagent doctor` then exits 0."""
    checks: list[CheckResult]
