"""The project's Markdown: every relative link resolves, and nothing points outside the repository.

A link resolves when its file exists (relative to the Markdown file) and, when it has a
`#fragment`, a heading of the target produces that anchor by GitHub's rule. Links to the web are
not fetched.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", ROOT / "service_files" / "README.md", *(ROOT / "docs").glob("*.md")]
)
EXTERNAL = ("http://", "https://", "mailto:")
FORBIDDEN = ("PROTOCOL.md", "DESIGN.md")
"""Documents that are not in the repository: nothing here may refer to them."""

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def without_code(text: str) -> str:
    """The text with fenced blocks and code spans removed: links are not read inside them."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(markdown: Path) -> list[str]:
    return _LINK.findall(without_code(markdown.read_text(encoding="utf-8")))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link markup and backticks dropped, lower case, every
    character but letters, digits, `_`, `-` and spaces removed, spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    """Every anchor the headings of `markdown` produce; a repeated one gets `-1`, `-2`, ..."""
    seen: Counter[str] = Counter()
    found = set()
    for heading in _HEADING.findall(_FENCE.sub("", markdown.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return found


def test_the_documents_are_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in DOCS}
    assert {"README.md", "service_files/README.md", "docs/protocol.md"} <= names


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_resolves(markdown: Path) -> None:
    broken = []
    for target in links(markdown):
        if target.startswith(EXTERNAL):
            continue
        path_part, _, fragment = target.partition("#")
        linked = (markdown.parent / unquote(path_part)).resolve() if path_part else markdown
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif fragment and linked.suffix == ".md" and unquote(fragment) not in anchors(linked):
            broken.append(f"{target}: no heading in {linked.name} makes #{fragment}")
    assert broken == []


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_no_mention_of_documents_outside_the_repository(markdown: Path) -> None:
    text = markdown.read_text(encoding="utf-8")
    assert [name for name in FORBIDDEN if name in text] == []


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Close codes", "close-codes"),
        ("`self_update`", "self_update"),
        ("Who may steer", "who-may-steer"),
        ("Errors, retries and backoff", "errors-retries-and-backoff"),
        (
            "Pong tail at 10,000 daemons: garbage collection",
            "pong-tail-at-10000-daemons-garbage-collection",
        ),
        ("The platform's side", "the-platforms-side"),
    ],
)
def test_slug_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
