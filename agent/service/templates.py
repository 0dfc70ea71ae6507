"""The unit, plist and settings templates of service_files/, the one place their text lives.

They ship in the wheel as the package `agent.service_files` (pyproject.toml maps the folder) and
are filled with `string.Template`: `$name` placeholders, `$$` for a dollar sign.
"""

from __future__ import annotations

from importlib.resources import files
from string import Template

PACKAGE = "agent.service_files"


def render(name: str, **values: str) -> str:
    """The template `name` with every placeholder filled; a missing value is a KeyError (a bug)."""
    text = (files(PACKAGE) / name).read_text(encoding="utf-8")
    return Template(text).substitute(values)
