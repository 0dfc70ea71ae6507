"""This machine as the daemon reports it: node, git and self-update, from the same collector."""

from __future__ import annotations

import shutil

from agent.doctor.results import passed, warned
from agent.machine.node import NodeInfo
from agent.protocol.doctor import CheckResult
from agent.protocol.models import Metadata, SelfUpdate


def check_node(node: NodeInfo | None) -> CheckResult:
    if node is None or node.version is None:
        return warned(
            "node",
            "no working node found, on PATH or in the nvm, fnm, volta or asdf folders: "
            "nodeVersion is reported as null",
            "install Node.js, or make the node you use reachable from the daemon's PATH "
            "(a service's PATH is not your shell's)",
        )
    return passed("node", f"{node.version} at {node.path} (found through {node.found_via})")


def check_git(metadata: Metadata) -> CheckResult:
    workdir = metadata.working_directory
    if shutil.which("git") is None:
        return warned(
            "git",
            "git is not on PATH: gitBranch is reported as null",
            "install git, or put it on the daemon's PATH",
        )
    if metadata.git_branch is None:
        return passed("git", f"{workdir} is not on a branch of a git repository: gitBranch is null")
    return passed("git", f"branch {metadata.git_branch} in {workdir}")


def check_self_update(update: SelfUpdate) -> CheckResult:
    where = update.install_path or "this install"
    if update.supported and update.writable:
        return passed("self_update", f"upgrades itself in place ({where})")
    fix = (
        f"upgrade by hand: {update.manual_command}"
        if update.manual_command
        else "upgrade it as it was installed"
    )
    return warned("self_update", update.reason or "cannot upgrade itself", fix)
