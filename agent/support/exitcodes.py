"""The daemon's exit codes, one per reason a person or a service manager acts on differently."""

OK = 0
"""Stopped on purpose (SIGTERM, SIGINT, the parent exited)."""
ERROR = 1
"""An unexpected failure; the log says what."""
CONFIG = 2
"""Bad flags, environment or config file; also argparse's usage errors."""
CREDENTIALS = 3
"""The platform refused the API key, or refused registration for good (404, not Letta)."""
REPLACED = 4
"""Another process took this identity (close 1000 `Replaced by new connection`)."""
ALREADY_RUNNING = 5
"""Another live daemon holds this identity (platform URL, device id, instance id)."""
UPGRADE_REFUSED = 6
"""`envagent upgrade`: this install must not or cannot upgrade itself; nothing was changed (a
failed upgrade is ERROR)."""
FILES = 7
"""A file or folder envagent needs is unusable: the state folder is writable by others or owned
by another user, a file is a symlink, a folder or not a regular file, or a path cannot be created
or written (`--log-file`, `--local-api-socket`, `XDG_STATE_HOME`). The one line on stderr names
the path and the cause; starting again cannot help until a person fixes it."""
RESTART = 75
"""Upgraded: start again (EX_TEMPFAIL). A service manager restarts on it; run by hand or by a
coding tool, the daemon re-executes itself instead of exiting."""
UNAVAILABLE = 69
"""`envagent service`: no usable service manager here, neither systemd (not running, as in a
container) nor launchd (EX_UNAVAILABLE)."""


class Finished(Exception):
    """Ends the run with one of these codes, from wherever the reason was found."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
