"""Evaluation suites (`eval/<name>.yaml`) and published reference tables (`eval/reference/*.csv`)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

from xdt.assets import asset_path
from xdt.errors import XdtError

SCHEMES = ("IOB2", "IOE2", "IOBES")
_SUITE_KEYS = {"name", "description", "split", "scheme", "reference", "languages"}


@dataclass(frozen=True)
class Suite:
    name: str
    languages: tuple[str, ...]
    split: str = "test"
    scheme: str = "IOB2"
    description: str = ""
    reference: Path | None = None  # published per-language F1 (CSV), resolved against the suite's folder
    path: Path | None = None


@dataclass(frozen=True)
class Reference:
    """Published per-language F1: {column: {lang: value}}; `source` names the file (its header names the paper)."""

    source: str
    columns: dict[str, dict[str, float]]

    def for_lang(self, lang: str) -> dict[str, float]:
        return {col: values[lang] for col, values in self.columns.items() if lang in values}


def suite_path(name_or_path: str) -> Path:
    """`wikiann41` -> eval/wikiann41.yaml; a path to a YAML file is taken as it is."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise XdtError(f"{candidate}: suite file not found")
        return candidate
    folder = asset_path("eval")
    path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise XdtError(f"unknown suite {name_or_path!r}; expected one of {', '.join(known) or '(none)'} "
                       f"(files in {folder}) or a path to a suite YAML file")
    return path


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise XdtError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise XdtError(f"{path}: expected a mapping with keys name, languages, split, scheme")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise XdtError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; "
                       f"expected {', '.join(sorted(_SUITE_KEYS))}")
    langs = raw.get("languages")
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) and x for x in langs):
        raise XdtError(f"{path}: languages: expected a non-empty list of language codes (quote `no`: YAML reads "
                       f"a bare no as false), got {langs!r}")
    if len(set(langs)) != len(langs):
        dupes = sorted({x for x in langs if langs.count(x) > 1})
        raise XdtError(f"{path}: languages: duplicated code(s) {', '.join(dupes)}")
    scheme = raw.get("scheme", "IOB2")
    if scheme not in SCHEMES:
        raise XdtError(f"{path}: scheme: expected one of {', '.join(SCHEMES)}, got {scheme!r}")
    split = raw.get("split", "test")
    if split not in ("train", "dev", "validation", "test"):
        raise XdtError(f"{path}: split: expected train, dev or test, got {split!r}")
    reference = raw.get("reference")
    ref_path = None
    if reference is not None:
        ref_path = (path.parent / str(reference)).resolve()
        if not ref_path.is_file():
            raise XdtError(f"{path}: reference: file {ref_path} not found")
    return Suite(name=str(raw.get("name", path.stem)), languages=tuple(langs), split=split, scheme=scheme,
                 description=str(raw.get("description", "")), reference=ref_path, path=path)


def load_reference(path: str | Path) -> Reference:
    """A CSV with `#` comment lines, a `lang` column and one numeric column per published system."""
    path = Path(path)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
             and not line.lstrip().startswith("#")]
    rows = list(csv.DictReader(lines))
    if not rows or "lang" not in rows[0]:
        raise XdtError(f"{path}: expected a CSV header with a `lang` column")
    columns: dict[str, dict[str, float]] = {}
    for lineno, row in enumerate(rows, 2):
        for col, value in row.items():
            if col == "lang" or not col.endswith("_f1"):
                continue
            try:
                columns.setdefault(col, {})[row["lang"]] = float(value)
            except (TypeError, ValueError):
                raise XdtError(f"{path}: row {lineno} ({row['lang']}), column {col}: expected a number, "
                               f"got {value!r}") from None
    return Reference(source=str(path), columns=columns)


def default_reference() -> Reference:
    return load_reference(asset_path("eval", "reference", "xtremedistil_acl2020_table17.csv"))
