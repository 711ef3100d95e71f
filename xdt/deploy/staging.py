"""Output folders that appear whole or not at all: written in a hidden sibling, renamed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from xdt.errors import XdtError


def check_out(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse a non-empty output folder (unless `overwrite`) before any work starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise XdtError(f"{out}: exists and is not a folder; choose another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise XdtError(f"{out}: exists and is not empty; choose another --out or pass --overwrite")
    return out


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False):
    """Yield a temporary sibling of `out`; on success it replaces `out`, on any error it is removed."""
    out = check_out(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result gets the usual permissions
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def folder_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
