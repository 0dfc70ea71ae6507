"""Where log lines go and what they look like (agent/support/logs.py): the three stderr formats,
the private rotated log file, and the redactor that keeps every registered secret out of every
line, tracebacks included."""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.support import logs
from agent.support.files import UnusableFile
from agent.support.logs import (
    JournaldFormatter,
    JsonFormatter,
    Redactor,
    register_secret,
    setup_logging,
    under_journald,
)

SECRET = "envk_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered secrets are process-wide: each test starts with none and leaves none."""
    monkeypatch.setattr(logs, "_SECRETS", set())


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """`setup_logging` replaces the root logger's handlers: put back pytest's after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in logs._QUIET_LIBRARIES}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, library_level in quiet.items():
        logging.getLogger(name).setLevel(library_level)


def record(message: str, *args: object, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("envagent.test", level, __file__, 1, message, args, None)


def failing_record(message: str) -> logging.LogRecord:
    """A record with the traceback of an exception whose message is `message`."""
    try:
        raise RuntimeError(message)
    except RuntimeError:
        exc_info = sys.exc_info()
    return logging.LogRecord("envagent.test", logging.ERROR, __file__, 1, "failed", (), exc_info)


FORMATTERS: dict[str, Callable[[], logging.Formatter]] = {
    "json": JsonFormatter,
    "journald": JournaldFormatter,
    "human": lambda: logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"),
}


@pytest.mark.parametrize("kind", list(FORMATTERS))
def test_a_registered_secret_never_reaches_a_line_of_any_format(kind: str) -> None:
    register_secret(SECRET)
    formatter = Redactor(FORMATTERS[kind]())
    for line in (
        formatter.format(record("key %s, again %s", SECRET, SECRET)),
        formatter.format(record(f"Authorization: Bearer {SECRET}")),
        formatter.format(failing_record(f"the platform said: bad key {SECRET}")),
    ):
        assert SECRET not in line and "****" in line
    traceback = formatter.format(failing_record(SECRET))
    assert "RuntimeError: ****" in traceback.replace("\\n", "\n")


def test_a_secret_the_json_format_escapes_is_redacted_too() -> None:
    """A JSON line spells a quote or a backslash escaped: the secret as given is not in it, its
    escaped spelling is."""
    secret = 'fake-key-"quoted"\\and\\back'
    register_secret(secret)
    line = Redactor(JsonFormatter()).format(record("key %s", secret))
    assert json.loads(line)["message"] == "key ****"
    human = Redactor(logging.Formatter("%(message)s")).format(record("key %s", secret))
    assert human == "key ****"


def test_only_secrets_are_redacted_and_an_empty_one_is_ignored() -> None:
    register_secret("")  # would otherwise put **** between every two characters
    register_secret(SECRET)
    line = Redactor(logging.Formatter("%(message)s")).format(record("plain words, %s", "envk_"))
    assert line == "plain words, envk_"


def test_secrets_are_redacted_only_once_registered() -> None:
    formatter = Redactor(logging.Formatter("%(message)s"))
    assert formatter.format(record(SECRET)) == SECRET
    register_secret(SECRET)
    assert formatter.format(record(SECRET)) == "****"


def test_a_json_line_has_the_time_level_logger_message_and_the_traceback() -> None:
    line = json.loads(JsonFormatter().format(failing_record("boom")))
    assert set(line) == {"time", "level", "logger", "message", "exception"}
    assert (line["level"], line["logger"], line["message"]) == ("error", "envagent.test", "failed")
    assert line["exception"].startswith("Traceback") and "RuntimeError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")
    assert "\n" not in JsonFormatter().format(failing_record("two\nlines"))


def test_every_journald_line_of_a_traceback_keeps_the_priority() -> None:
    lines = JournaldFormatter().format(failing_record("boom")).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[0] == "<3>envagent.test: failed"
    assert JournaldFormatter().format(record("x", level=logging.DEBUG)).startswith("<7>")
    assert JournaldFormatter().format(record("x", level=25)) == "<6>envagent.test: x"


def test_journald_is_recognised_only_by_the_stream_s_own_device_and_inode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "stream").open("w") as stream, (tmp_path / "other").open("w") as other:
        info, other_info = os.fstat(stream.fileno()), os.fstat(other.fileno())
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        assert not under_journald(stream)
        monkeypatch.setenv("JOURNAL_STREAM", f"{other_info.st_dev}:{other_info.st_ino}")
        assert not under_journald(stream)  # a journal stream inherited by a child's other fd
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        assert under_journald(stream)
    assert not under_journald(stream)  # closed: no descriptor to look at


@pytest.mark.usefixtures("logging_restored")
@pytest.mark.parametrize(
    ("journal", "human", "expected"),
    [(False, None, "json"), (True, None, "journald"), (True, True, "journald"),
     (False, True, "human"), (False, False, "json"), (True, False, "json")],
)  # fmt: skip
def test_stderr_gets_the_format_of_where_it_goes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    journal: bool,
    human: bool | None,
    expected: str,
) -> None:
    with (tmp_path / "stderr").open("w") as stderr:
        monkeypatch.setattr(sys, "stderr", stderr)
        info = os.fstat(stderr.fileno())
        if journal:
            monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        else:
            monkeypatch.delenv("JOURNAL_STREAM", raising=False)
        setup_logging(debug=False, human=human)
        register_secret(SECRET)
        logging.getLogger("envagent.test").warning("key %s", SECRET)
        logging.getLogger("envagent.test").debug("not at INFO")
    [line] = (tmp_path / "stderr").read_text().splitlines()
    shapes: dict[str, Callable[[], bool]] = {
        "json": lambda: json.loads(line)["message"] == "key ****",
        "journald": lambda: line == "<4>envagent.test: key ****",
        "human": lambda: line.endswith(" WARNING envagent.test: key ****") and line[0].isdigit(),
    }
    assert shapes[expected](), line


@pytest.mark.usefixtures("logging_restored")
def test_libraries_speak_only_from_warning_unless_debugging(tmp_path: Path) -> None:
    setup_logging(debug=False, human=True)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("envagent").getEffectiveLevel() == logging.INFO
    setup_logging(debug=True, human=True)
    assert logging.getLogger("httpx").getEffectiveLevel() == logging.INFO
    assert logging.getLogger("envagent").getEffectiveLevel() == logging.DEBUG
    assert len(logging.getLogger().handlers) == 1  # the earlier setup's handler was replaced


@pytest.mark.usefixtures("logging_restored")
def test_the_log_file_is_private_json_redacted_and_its_rotations_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "LOG_FILE_BYTES", 400)
    path = tmp_path / "logs" / "envagent.log"  # the folder is made
    setup_logging(debug=False, human=True, log_file=path)
    register_secret(SECRET)
    for n in range(8):
        logging.getLogger("envagent.test").info("line %d with key %s", n, SECRET)
    files = sorted(path.parent.iterdir())
    assert [file.name for file in files][:3] == ["envagent.log", "envagent.log.1", "envagent.log.2"]
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert SECRET.encode() not in file.read_bytes()
    messages = [json.loads(line)["message"] for file in files for line in file.open()]
    assert sorted(messages) == [f"line {n} with key ****" for n in range(8)]


@pytest.mark.usefixtures("logging_restored")
def test_a_log_file_planted_as_a_symlink_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    """The log may sit in a folder others can write, such as /tmp."""
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    target.chmod(0o644)
    path = tmp_path / "envagent.log"
    path.symlink_to(target)
    with pytest.raises(UnusableFile) as raised:
        setup_logging(debug=False, human=True, log_file=path)
    assert str(raised.value) == (
        f"{path}: cannot use it as the log file: a symlink, which is never followed"
    )
    assert target.read_text() == "keep me\n" and stat.S_IMODE(target.stat().st_mode) == 0o644


@pytest.mark.usefixtures("logging_restored")
def test_a_log_file_whose_folder_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    path = tmp_path / "file" / "logs" / "envagent.log"
    with pytest.raises(UnusableFile) as raised:
        setup_logging(debug=False, human=True, log_file=path)
    assert str(raised.value) == f"{path}: cannot create its folder: Not a directory"
