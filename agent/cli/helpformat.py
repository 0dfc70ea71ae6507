"""The help of every `envagent` parser: each option's default shown where it tells something."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, with ` (default: D)` after an option's text, as
    `ArgumentDefaultsHelpFormatter` does, but not where it would be noise: a flag's default is
    its absence, and a default of None means the text says what happens instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        noise = action.default in (None, argparse.SUPPRESS) or action.nargs == 0
        if text is None or noise or "%(default)" in text:
            return text
        return f"{text} (default: %(default)s)"
