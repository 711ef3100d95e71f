"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits with code 2."""

from __future__ import annotations

from pathlib import Path


class XdtError(Exception):
    """Bad input: a file, a config key or a command-line value that is not what xdt expects."""


class ConfigError(XdtError):
    """A config key with a wrong name, type or value. The message starts with the dotted key."""


class DataError(XdtError):
    """A data file that cannot be read as the format says. The message starts with `file:line`."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class Preempted(Exception):
    """A signal or the stop file ended the run after a checkpoint was saved; the CLI exits with EXIT_REQUEUE."""
