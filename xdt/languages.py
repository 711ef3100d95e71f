"""The 41-language registry of `multilingual/languages.yaml`."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import yaml

from xdt.assets import asset_path
from xdt.errors import XdtError


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    iso3: str
    splits: dict[str, int]  # sentence counts of the balanced WikiAnn splits: train, dev, test


@lru_cache(maxsize=1)
def registry() -> dict[str, Language]:
    path = asset_path("multilingual", "languages.yaml")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["languages"]
    return {code: Language(code=code, **fields) for code, fields in raw.items()}


def language(code: str) -> Language:
    langs = registry()
    if code not in langs:
        raise XdtError(f"unknown language {code!r}; known: {' '.join(sorted(langs))}")
    return langs[code]


def parse_langs(spec: str | None) -> list[str] | None:
    """`"de,en"` -> ["de", "en"]; None (the option not given) -> None (all). An empty list (`--langs ""`) is
    refused: it used to mean every language. Codes outside the registry are allowed: WikiAnn has 176 languages
    and a user may evaluate any of them."""
    if spec is None:
        return None
    codes = [c.strip() for c in spec.split(",") if c.strip()]
    if not codes:
        raise XdtError(f"--langs {spec!r}: expected comma-separated language codes such as de,en")
    return codes
