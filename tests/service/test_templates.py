"""agent/service/templates.py: the templates of service_files/, shipped as the package
`agent.service_files` and filled with string.Template."""

from __future__ import annotations

import tomllib
from pathlib import Path
from string import Template

import pytest

from agent.service.templates import render

REPO = Path(__file__).resolve().parents[2]  # tests/service/ is two below the checkout
UNIT_VALUES = {
    "exec_start",
    "environment_file",
    "path",
    "home",
    "xdg_state_home",
    "xdg_config_home",
}
PLIST_VALUES = {"label", "program_arguments", "environment_variables", "log_path"}
PLACEHOLDERS = {
    "envagent-user.service": UNIT_VALUES,
    "envagent-system.service": UNIT_VALUES | {"user", "read_write_paths"},
    "envagent.env": {"api_key", "base_url", "network"},
    "launchd-agent.plist": PLIST_VALUES,
    "launchd-daemon.plist": PLIST_VALUES | {"user"},
    "launchd-settings.toml": {"settings"},
}
"""What agent/service/systemd.py and launchd.py fill in, template by template."""


def test_every_template_has_exactly_the_placeholders_the_code_fills() -> None:
    templates = {path.name for path in (REPO / "service_files").iterdir()}
    assert templates - {"README.md", "__init__.py", "__pycache__"} == set(PLACEHOLDERS)
    for name, expected in PLACEHOLDERS.items():
        template = Template((REPO / "service_files" / name).read_text(encoding="utf-8"))
        assert template.is_valid(), name  # no stray `$` (a dollar is `$$`)
        assert set(template.get_identifiers()) == expected, name


def test_render_fills_the_shipped_template() -> None:
    text = render("envagent.env", api_key='"k"', base_url="", network="")

    source = (REPO / "service_files" / "envagent.env").read_text(encoding="utf-8")
    assert text == source.replace("$api_key", '"k"').replace("$base_url", "").replace(
        "$network", ""
    )


def test_a_missing_value_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="base_url"):
        render("envagent.env", api_key="x")


def test_a_value_is_not_read_as_a_placeholder() -> None:
    """A value holding `$name` stays as it is: substitution is one pass."""
    text = render("envagent.env", api_key="$base_url", base_url="u", network="")

    assert "LETTA_API_KEY=$base_url\n" in text


# Moved from test_install.py.


def test_every_package_and_template_ships_in_the_wheel() -> None:
    """The package list in pyproject.toml is explicit (the templates live outside agent/), so a
    new package under agent/ must be added there, and every template must match package-data."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "agent").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == found | {"agent.service_files"}
    assert setuptools["package-dir"] == {"agent.service_files": "service_files"}
    patterns = setuptools["package-data"]["agent.service_files"]
    templates = {p for p in (REPO / "service_files").iterdir() if p.suffix not in (".py", ".md")}
    assert templates
    assert all(any(template.match(pattern) for pattern in patterns) for template in templates)
