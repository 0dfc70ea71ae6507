"""Where log lines go and what they look like.

- On a terminal (or with `--foreground`): human lines with a time.
- Under systemd (stderr is the journal, `$JOURNAL_STREAM`): `<priority>` prefixes so journald
  keeps the level, and no time, since journald adds its own.
- Otherwise (launchd, a coding tool's pipe): JSON lines, one object a line.
- `--log-file`: JSON lines as well, rotated by size.

Every line, tracebacks included, passes through a redactor that replaces the API key and the
local token with `****`: the key must never reach a log, whatever a library puts in a message.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from agent.support.files import open_private, unusable

LOG_FILE_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
_JOURNAL_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}
_QUIET_LIBRARIES = ("websockets", "aiohttp", "httpx", "httpcore", "asyncio", "git")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class JournaldFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _JOURNAL_PRIORITY.get(record.levelno, 6)
        # Each line of a traceback gets the prefix too, or journald logs it at the default level.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


_SECRETS: set[str] = set()


def register_secret(secret: str) -> None:
    """From now on, `secret` is written as `****` in every log line."""
    if secret:
        _SECRETS.add(secret)
        # And as a JSON line spells it: quotes, backslashes and control characters escaped.
        _SECRETS.add(json.dumps(secret, ensure_ascii=False)[1:-1])


class Redactor(logging.Formatter):
    """Wraps a formatter and blanks every registered secret in what it produces."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        text = self._inner.format(record)
        for secret in _SECRETS:
            text = text.replace(secret, "****")
        return text


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Every file it opens, rotated ones included, is 0600 and never reached through a symlink:
    the log may sit in a folder others can write, such as /tmp."""

    def _open(self) -> io.TextIOWrapper:
        fd = open_private(Path(self.baseFilename), os.O_WRONLY | os.O_APPEND, "the log file")
        return io.TextIOWrapper(
            io.FileIO(fd, "a"), encoding=self.encoding or "utf-8", errors=self.errors
        )


def under_journald(stream: TextIO) -> bool:
    """systemd sets JOURNAL_STREAM to the device and inode of the journal's stream."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{stat.st_dev}:{stat.st_ino}"


def _stderr_formatter(human: bool | None) -> logging.Formatter:
    if human is False:  # JSON was asked for: wherever stderr goes
        return JsonFormatter()
    if under_journald(sys.stderr):
        return JournaldFormatter()
    if human or sys.stderr.isatty():
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    return JsonFormatter()


def setup_logging(*, debug: bool, human: bool | None, log_file: Path | None = None) -> None:
    """Configure the root logger for the daemon or a CLI command. On stderr: `human` lines
    (the journal's own format under journald), JSON when `human` is False, and when it is
    None whatever suits where stderr goes (the journal, a terminal, else JSON).

    Raises UnusableFile when `log_file` cannot be opened as a private file."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    formatters: list[logging.Formatter] = [_stderr_formatter(human)]
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise unusable(log_file, "cannot create its folder", exc) from None
        file_handler = PrivateRotatingFileHandler(
            log_file, maxBytes=LOG_FILE_BYTES, backupCount=LOG_FILE_BACKUPS, encoding="utf-8"
        )
        handlers.append(file_handler)
        formatters.append(JsonFormatter())
    for handler, formatter in zip(handlers, formatters, strict=True):
        handler.setFormatter(Redactor(formatter))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if debug else logging.WARNING)
