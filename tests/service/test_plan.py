"""agent/service/plan.py: the steps of an install, and the dry run that shows them (every note,
folder, file with its path, mode, owner and whole content as shown, and command)."""

from __future__ import annotations

import shlex
from pathlib import Path

from agent.service.launchd import Launchd
from agent.service.plan import (
    MakeDir,
    Plan,
    RemoveFile,
    Run,
    ServiceManager,
    WriteFile,
    describe,
)
from agent.service.systemd import Systemd
from tests.service.service_helpers import KEY, nothing_present, spec, target


def test_a_dry_run_shows_every_step_in_order(tmp_path: Path) -> None:
    owner = target(tmp_path).account
    plan = Plan(
        steps=[
            MakeDir(tmp_path / "state", 0o700, owner),
            MakeDir(tmp_path / "logs", 0o755),
            WriteFile(
                tmp_path / "unit", 0o644, "[Unit]\n\nDescription=x\n", "[Unit]\n\nDescription=x\n"
            ),
            WriteFile(tmp_path / "secret", 0o600, f"KEY={KEY}\n", "KEY=****\n", owner),
            RemoveFile(tmp_path / "old"),
            Run(("systemctl", "--user", "enable", "--now", "envagent.service")),
            Run(("launchctl", "bootout", "gui/501/org.envagent"), may_fail=True),
        ],
        notes=["first note", "second note"],
    )

    assert describe(plan).splitlines() == [
        "dry run: nothing is written and nothing is run",
        "note: first note",
        "note: second note",
        f"mkdir {tmp_path}/state (mode 0700, owner {owner.name}, if missing)",
        f"mkdir {tmp_path}/logs (mode 0755, if missing)",
        f"write {tmp_path}/unit (mode 0644):",
        "    [Unit]",
        "",  # a blank line of the file, without trailing spaces
        "    Description=x",
        f"write {tmp_path}/secret (mode 0600, owner {owner.name}):",
        "    KEY=****",
        f"remove {tmp_path}/old",
        "run systemctl --user enable --now envagent.service",
        "run launchctl bootout gui/501/org.envagent (may fail)",
    ]
    assert KEY not in describe(plan)


def test_a_command_is_shown_as_a_shell_would_take_it() -> None:
    argv = ("launchctl", "bootstrap", "gui/501", "/Users/a b/it's $HOME.plist")

    line = describe(Plan(steps=[Run(argv)])).splitlines()[-1]

    assert shlex.split(line.removeprefix("run ")) == list(argv)


def test_an_empty_plan_says_only_that_it_is_a_dry_run() -> None:
    assert describe(Plan()) == "dry run: nothing is written and nothing is run"


def test_both_managers_list_the_service_file_first_and_show_no_key(tmp_path: Path) -> None:
    """What `uninstall` relies on (the first file names the service), and what the dry run of
    a real plan shows: every file, the key of neither."""
    managers: list[ServiceManager] = [
        Systemd(target(tmp_path)),
        Launchd(target(tmp_path, "launchd")),
    ]
    for manager in managers:
        plan = manager.install(spec(tmp_path), nothing_present)
        shown = describe(plan)

        assert manager.files[0].suffix in (".service", ".plist")
        files = [step.path for step in plan.steps if isinstance(step, WriteFile)]
        assert set(files) == set(manager.files)
        assert all(f"write {path} (mode " in shown for path in files)
        assert KEY not in shown
