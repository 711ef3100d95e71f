"""A code-switched transfer set from any WikiAnn-format training folder and MUSE dictionaries given as paths.

The quickstart's mock data (and any real WikiAnn folder) becomes a transfer set with:

    from xdt.transfer import build_mock_transfer
    build_mock_transfer("runs/quickstart/data", "path/to/muse", "runs/quickstart/transfer")

or, equivalently, `xdt transfer build configs/transfer/quickstart.yaml --out DIR sources.0.path=DATA
resources.dictionaries=MUSE`.
"""

from __future__ import annotations

from pathlib import Path

from xdt.transfer.build import BuildResult, build_transfer
from xdt.transfer.config import load_transfer_config


def build_mock_transfer(train_path: str | Path, dictionaries: str | Path | None, out: str | Path,
                        langs: list[str] | None = None, size: int | None = None, seed: int = 0,
                        recipe: str = "codeswitch", split: str = "train",
                        dictionary_files: dict[str, str] | None = None, **augment) -> BuildResult:
    """The labeled training split under `train_path` (labels stripped; augmented copies keep them in
    labeled.jsonl), code-switched with the en-X dictionaries of folder `dictionaries`. `augment` overrides
    recipe keys, e.g. `codeswitch={"rate": 2.0}`. Languages without a dictionary are reported, not fatal."""
    data = {
        "seed": seed,
        "recipe": recipe,
        "sources": [{"path": str(train_path), "kind": "labeled", "split": split, "langs": langs}],
        "sampling": {"size": size, "langs": langs},
        "resources": {"dictionaries": str(dictionaries) if dictionaries is not None else None,
                      "dictionary_files": dict(dictionary_files or {})},
        "augment": augment,
    }
    return build_transfer(load_transfer_config(data=data), out)
