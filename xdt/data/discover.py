"""Find the files of a split under a path and tell their format, so every command takes one PATH.

Layouts recognised under a folder (first match wins):
  save_to_disk folder (dataset_dict.json/state.json)  -> hf
  {split}-{lang}.tsv                                   -> xtreme  (XTREME/PAN-X)
  {lang}/{split}                                       -> raw     (Rahimi et al.)
  {lang}/{split}*.parquet, {split}*.parquet            -> hf
  {split}.tsv, {split}_*.tsv, {split}.txt              -> detected from content (xtremedistil, xtreme, raw, text)
A single file is read as its content says (or as `fmt` says).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xdt.data.hf_dataset import parquet_files
from xdt.data.readers import (
    FORMATS,
    ReadOptions,
    ReadReport,
    iter_lines,
    read_conll,
    read_hf,
    read_text,
    read_xtremedistil,
)
from xdt.data.sentence import Sentence, is_iob_tag
from xdt.errors import DataError, XdtError

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
_XTREME_NAME = re.compile(r"^(train|dev|validation|valid|test)-([A-Za-z_-]+)\.tsv$")
_LANG_PREFIX = re.compile(r"^([a-z]{2,3}(?:[-_][A-Za-z]+)?):.")


@dataclass(frozen=True)
class DataSource:
    """One readable unit: a file (or dataset split) in one format. `lang` None: the lines name their language."""

    format: str
    split: str
    path: str
    lang: str | None = None


def canonical_split(split: str) -> str:
    for canon, aliases in SPLIT_ALIASES.items():
        if split in aliases:
            return canon
    raise XdtError(f"unknown split {split!r}; expected one of train, dev (validation), test")


def detect_file_format(path: Path) -> str:
    """Format of one file from its name, then from its first 200 non-blank lines."""
    if path.suffix == ".parquet":
        return "hf"
    if _XTREME_NAME.match(path.name):
        return "xtreme"
    lines = []
    for _, line in iter_lines(path):
        if line.strip():
            lines.append(line)
        if len(lines) >= 200:
            break
    if not lines:
        raise DataError(path, "file has only blank lines")
    with_tab = [line.split("\t") for line in lines if "\t" in line]
    if not with_tab:
        return "text"
    if all(len(f) == 2 and " " not in f[0].strip() and len(f[1].split()) == 1 for f in with_tab):
        if not is_iob_tag(with_tab[0][1].strip()):
            return "text"  # `lang<TAB>oneword` lines
        prefixes = {m.group(1) if (m := _LANG_PREFIX.match(f[0])) else None for f in with_tab}
        return "raw" if None not in prefixes and len(prefixes) == 1 else "xtreme"
    second = [f[1].split() for f in with_tab if len(f) > 1]
    if all(all(is_iob_tag(t.rpartition(":")[2]) for t in tags) for tags in second if tags):
        return "xtremedistil"
    return "text"


def discover(path: str | Path, split: str | None = None, fmt: str | None = None) -> list[DataSource]:
    """Every source of `split` (all splits when None) under `path`, with its format and language when known."""
    if fmt is not None and fmt not in FORMATS:
        raise XdtError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text = str(path)
    if text.startswith("hf:"):
        return [DataSource("hf", canonical_split(s), text) for s in ([split] if split else SPLITS)]
    path = Path(path)
    if not path.exists():
        raise DataError(path, "not found")
    splits = [canonical_split(split)] if split else list(SPLITS)
    if path.is_file():
        form = fmt or detect_file_format(path)
        name = canonical_split(split) if split else _split_from_name(path) or "all"
        return [DataSource(form, name, str(path), _lang_from_name(path))]

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return [DataSource("hf", s, str(path)) for s in splits if _hf_has_split(path, s)]

    found: list[DataSource] = []
    for s in splits:
        found += _discover_split(path, s, fmt)
    if not found:
        wanted = split or "any split"
        raise DataError(path, f"no data files for {wanted}; expected {{split}}-{{lang}}.tsv (XTREME), "
                        "{lang}/{split} (raw WikiAnn), parquet or save_to_disk folders (HF), or "
                        "{split}.tsv (XtremeDistil)")
    return found


def _discover_split(folder: Path, split: str, fmt: str | None) -> list[DataSource]:
    aliases = SPLIT_ALIASES[split]
    xtreme = sorted(f for a in aliases for f in folder.glob(f"{a}-*.tsv") if _XTREME_NAME.match(f.name))
    if xtreme:
        return [DataSource(fmt or "xtreme", split, str(f), _XTREME_NAME.match(f.name).group(2)) for f in xtreme]
    per_lang: list[DataSource] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [sub / a for a in aliases if (sub / a).is_file()]
        if files:
            per_lang.append(DataSource(fmt or detect_file_format(files[0]), split, str(files[0]), sub.name))
        elif parquet := parquet_files(sub, split):
            per_lang += [DataSource("hf", split, str(p), sub.name) for p in parquet]
    if per_lang:
        return per_lang
    if parquet := parquet_files(folder, split):
        return [DataSource("hf", split, str(p)) for p in parquet]
    loose = sorted({f for a in aliases for pattern in (f"{a}.tsv", f"{a}_*.tsv", f"{a}.txt", f"{a}")
                    for f in folder.glob(pattern) if f.is_file()})
    return [DataSource(fmt or detect_file_format(f), split, str(f), _lang_from_name(f)) for f in loose]


def _hf_has_split(folder: Path, split: str) -> bool:
    import json

    dd = folder / "dataset_dict.json"
    if not dd.exists():
        return True
    names = json.loads(dd.read_text())["splits"]
    return any(a in names for a in SPLIT_ALIASES[split])


def _split_from_name(path: Path) -> str | None:
    stem = path.name.split(".")[0]
    for token in re.split(r"[-_]", stem):
        for canon, aliases in SPLIT_ALIASES.items():
            if token in aliases:
                return canon
    return None


def _lang_from_name(path: Path) -> str | None:
    if m := _XTREME_NAME.match(path.name):
        return m.group(2)
    return None


def read_source(source: DataSource, opts: ReadOptions, report: ReadReport) -> Iterator[Sentence]:
    path = Path(source.path)
    if source.format == "xtreme":
        return read_conll(path, opts, source.lang, prefixed=False)
    if source.format == "raw":
        return read_conll(path, opts, source.lang, prefixed=True)
    if source.format == "xtremedistil":
        return read_xtremedistil(path, opts, report)
    if source.format == "text":
        return read_text(path, opts)
    if source.format == "hf":
        lang_opts = opts if source.lang is None or opts.lang else ReadOptions(opts.labels, opts.strict, source.lang)
        return read_hf(source.path, source.split, lang_opts)
    raise XdtError(f"unknown format {source.format!r}; expected one of {', '.join(FORMATS)}")


def read_split(
    path: str | Path,
    split: str | None,
    langs: list[str] | None = None,
    fmt: str | None = None,
    opts: ReadOptions | None = None,
    report: ReadReport | None = None,
) -> dict[str, dict[str, list[Sentence]]]:
    """{split: {lang: [Sentence, ...]}} for every source under `path`, restricted to `langs` when given."""
    opts = opts or ReadOptions()
    report = report if report is not None else ReadReport()
    out: dict[str, dict[str, list[Sentence]]] = {}
    wanted = set(langs) if langs else None
    for source in discover(path, split, fmt):
        if wanted is not None and source.lang is not None and source.lang not in wanted:
            continue
        by_lang = out.setdefault(source.split, {})
        for sentence in read_source(source, opts, report):
            if wanted is None or sentence.lang in wanted:
                by_lang.setdefault(sentence.lang, []).append(sentence)
    return out
