"""Errors a user can fix. The CLI prints their message alone (no traceback) and exits with code 2."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# What a path that resolves back to itself is called in every error that meets one (never "not found")
SYMLINK_LOOP = "a symlink loop (following its links leads back to them, never to a file or folder)"


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


def is_symlink_loop(path: str | Path) -> bool:
    """True when following `path`'s symbolic links never ends (ELOOP): `Path.exists()` calls such a path missing
    and `Path.resolve()` raises RuntimeError; xdt names it as what it is."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    except (ValueError, TypeError):  # a NUL byte, not a path
        return False
    return False
