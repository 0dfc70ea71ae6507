"""envagent: an environment agent for coding platforms, and a reference platform."""

__version__ = "0.1.0"
