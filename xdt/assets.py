"""Where the declarative assets live: the top-level `multilingual/`, `eval/`, `configs/`, `ds_configs/` folders.

They sit beside the `xdt` package in the source tree (editable install, the documented way to install xdt).
`XDT_HOME` points elsewhere, for a site that keeps its own edited copies.
"""

from __future__ import annotations

import os
from pathlib import Path

from xdt.errors import XdtError


def project_root() -> Path:
    home = os.environ.get("XDT_HOME")
    return Path(home) if home else Path(__file__).resolve().parents[1]


def asset_path(*parts: str) -> Path:
    path = project_root().joinpath(*parts)
    if not path.exists():
        raise XdtError(
            f"{path}: xdt asset not found; install xdt from its source tree (pip install -e .) "
            "or set XDT_HOME to a folder holding multilingual/, eval/, configs/ and ds_configs/"
        )
    return path
