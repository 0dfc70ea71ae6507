"""The service managers envagent installs for: plain names, so that the command line offers them
without loading the installers."""

from typing import Literal

Manager = Literal["systemd", "launchd"]
MANAGERS: tuple[Manager, ...] = ("systemd", "launchd")
