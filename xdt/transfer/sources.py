"""The sentences of one transfer source, read through the readers of xdt.data, in a fixed order.

A `text` source is a file (one sentence per line, optionally `lang<TAB>text`; `lang:` names the language of lines
that do not) or a folder whose files match `pattern` (`{lang}` or `{iso3}`, e.g. Tatoeba's
`tatoeba.{iso3}-eng.{iso3}`). A `labeled` source is any WikiAnn path `xdt data inspect` reads (XTREME, raw, HF,
XtremeDistil), split `split`; its tags travel with the sentence so that augmented copies can keep them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xdt.data.discover import DataSource, discover, read_source
from xdt.data.readers import UNDETERMINED_LANG, ReadOptions, ReadReport, read_text
from xdt.data.sentence import Sentence
from xdt.errors import SYMLINK_LOOP, DataError, is_symlink_loop
from xdt.languages import registry
from xdt.transfer.config import SourceConfig, resolve_path


@dataclass(frozen=True)
class SourceUnit:
    """One file (or dataset split) of a source, with the language its name gives (None: the lines say)."""

    path: str
    lang: str | None
    data: DataSource | None = None  # labeled sources: how xdt.data reads it


def _pattern_regex(pattern: str) -> re.Pattern:
    parts = re.split(r"(\{lang\}|\{iso3\})", pattern)
    regex, names = "", []
    for part in parts:
        if part in ("{lang}", "{iso3}"):
            name = part[1:-1]
            regex += rf"(?P<{name}>[A-Za-z_-]+)" if name not in names else rf"(?P={name})"
            names.append(name)
        else:
            regex += re.escape(part)
    return re.compile(f"^{regex}$")


def source_units(src: SourceConfig, langs: list[str] | None = None) -> list[SourceUnit]:
    """The files of a source; files whose name gives a language outside `src.langs` or `langs` are left out."""
    path = resolve_path(src.path)
    if not path.exists():
        raise DataError(path, f"{SYMLINK_LOOP}; expected the source's file or folder" if is_symlink_loop(path)
                        else "source not found")
    if src.kind == "labeled":
        units = [SourceUnit(d.path, d.lang, d) for d in discover(path, src.split, src.format)]
        kept = [u for u in units if u.lang is None or ((src.langs is None or u.lang in src.langs)
                                                       and (langs is None or u.lang in langs))]
        if not kept:
            raise DataError(path, f"no {src.split} file for languages {', '.join(src.langs or langs or [])}; "
                            f"found {', '.join(sorted(str(u.lang) for u in units))}")
        return kept
    if path.is_file():
        return [SourceUnit(str(path), src.lang)]
    if src.pattern is None:
        raise DataError(path, "a text source folder needs `pattern`, e.g. tatoeba.{iso3}-eng.{iso3} or {lang}.txt")
    by_iso3 = {lang.iso3: code for code, lang in registry().items()}
    regex = _pattern_regex(src.pattern)
    units = []
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        m = regex.match(file.name)
        if not m:
            continue
        groups = m.groupdict()
        lang = groups.get("lang") or by_iso3.get(groups.get("iso3", ""))
        if lang is None:
            raise DataError(file, f"ISO 639-3 code {groups['iso3']!r} is not in multilingual/languages.yaml; "
                            "name the file with {lang} or add the language to the registry")
        if (src.langs is None or lang in src.langs) and (langs is None or lang in langs):
            units.append(SourceUnit(str(file), lang))
    if not units:
        wanted = sorted(set(src.langs or langs or []) & set(langs or src.langs or []))
        raise DataError(path, f"no file matches pattern {src.pattern!r}"
                        + (f" for languages {', '.join(wanted)}" if src.langs or langs else ""))
    return units


def read_unit(src: SourceConfig, unit: SourceUnit, report: ReadReport) -> Iterator[Sentence]:
    if src.kind == "labeled":
        opts = ReadOptions(labels=None if src.any_tags else ReadOptions.labels, lang=src.lang)
        return read_source(unit.data, opts, report)
    lang = unit.lang or src.lang
    return _checked_text(Path(unit.path), ReadOptions(lang=lang))


def _checked_text(path: Path, opts: ReadOptions) -> Iterator[Sentence]:
    for sentence in read_text(path, opts):
        if sentence.lang == UNDETERMINED_LANG and opts.lang is None:
            raise DataError(path, "a line names no language; write lang<TAB>text lines, or set the source's "
                            "`lang` (or a `pattern` with {lang}/{iso3} for a folder)")
        yield sentence


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unit_files(unit: SourceUnit) -> list[Path]:
    """The files behind a unit (a dataset folder has several), for content hashes."""
    path = Path(unit.path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return []
