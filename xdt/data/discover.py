"""Find the files of a split under a path and tell their format, so every command takes one PATH.

Layouts recognised under a folder:
  save_to_disk folder (dataset_dict.json/state.json)  -> hf
  {split}-{lang}.tsv                                   -> xtreme  (XTREME/PAN-X)
  {lang}/{split}                                       -> detected from content (raw for Rahimi et al.'s files)
  {lang}/{split}*.parquet, {split}*.parquet            -> hf
  {split}.tsv, {split}_*.tsv, {split}.txt              -> detected from content (xtremedistil, xtreme, raw, text)
A folder holding a split in two of these layouts is refused (naming a file of each), never read in part.
A single file is read as its content says (or as `fmt` says). Detection reads up to DETECT_LINES non-blank lines; the
readers check that every line they read fits the format they were given, so a forced `--format` that does not fit
is refused too.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xdt.data.hf_dataset import parquet_files
from xdt.data.readers import (
    FORMATS,
    LANG_PREFIX,
    ReadOptions,
    ReadReport,
    iter_lines,
    read_conll,
    read_hf,
    read_text,
    read_xtremedistil,
)
from xdt.data.scheme import detect_scheme, iob1_to_iob2, opens_with
from xdt.data.sentence import Sentence, is_iob_tag
from xdt.errors import SYMLINK_LOOP, DataError, XdtError, is_symlink_loop

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": ("train",), "dev": ("dev", "validation", "valid"), "test": ("test",)}
_XTREME_NAME = re.compile(r"^(train|dev|validation|valid|test)-([A-Za-z_-]+)\.tsv$")


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


DETECT_LINES = 20000  # a majority of this many lines decides a format; reading 20k-sentence files whole did not


def detect_file_format(path: Path) -> str:
    """Format of one file from its name, else from its first DETECT_LINES lines, by majority: `token<TAB>TAG` lines
    (raw when half or more of the tokens carry a `lang:` prefix, else xtreme), `words<TAB>TAGS` lines
    (xtremedistil), or anything else (text). The reader then refuses each line that does not fit."""
    if path.suffix == ".parquet":
        return "hf"
    if _XTREME_NAME.match(path.name):
        return "xtreme"
    conll = prefixed = sentence = other = 0
    for _, line in iter_lines(path):  # refuses a file of blank lines only
        if not line.strip():
            continue
        if conll + sentence + other == DETECT_LINES:
            break
        fields = line.split("\t")
        tags = fields[1].split() if len(fields) == 2 else []
        if not tags or not all(is_iob_tag(t.rpartition(":")[2]) for t in tags):
            other += 1
        elif len(tags) == 1 and len(fields[0].split()) == 1:
            conll += 1
            prefixed += bool(LANG_PREFIX.match(fields[0]))
        else:
            sentence += 1
    if other >= conll + sentence:
        return "text"
    if conll >= sentence:
        return "raw" if 2 * prefixed >= conll else "xtreme"
    return "xtremedistil"


def discover(path: str | Path, split: str | None = None, fmt: str | None = None) -> list[DataSource]:
    """Every source of `split` (all splits when None) under `path`, with its format and language when known."""
    if fmt is not None and fmt not in FORMATS:
        raise XdtError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    text = str(path)
    if text.startswith("hf:"):
        return [DataSource("hf", canonical_split(s), text) for s in ([split] if split else SPLITS)]
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{SYMLINK_LOOP}; expected a data file or folder" if is_symlink_loop(path)
                        else "not found")
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
    """The sources of `split` in the one layout the folder holds it in; two layouts are refused, since reading
    one of them would drop the other's files without a word."""
    aliases = SPLIT_ALIASES[split]
    layouts: dict[str, list[DataSource]] = {}
    xtreme = sorted(f for a in aliases for f in folder.glob(f"{a}-*.tsv") if _XTREME_NAME.match(f.name))
    if xtreme:
        layouts["{split}-{lang}.tsv"] = [DataSource(fmt or "xtreme", split, str(f), _XTREME_NAME.match(f.name).group(2))
                                         for f in xtreme]
    per_lang: list[DataSource] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [sub / a for a in aliases if (sub / a).is_file()]
        if files:
            per_lang.append(DataSource(fmt or detect_file_format(files[0]), split, str(files[0]), sub.name))
        elif parquet := parquet_files(sub, split):
            per_lang += [DataSource("hf", split, str(p), sub.name) for p in parquet]
    if per_lang:
        layouts["{lang}/{split}"] = per_lang
    if parquet := parquet_files(folder, split):
        layouts["{split}*.parquet"] = [DataSource("hf", split, str(p)) for p in parquet]
    loose = sorted({f for a in aliases for pattern in (f"{a}.tsv", f"{a}_*.tsv", f"{a}.txt", f"{a}")
                    for f in folder.glob(pattern) if f.is_file()})
    if loose:
        layouts["{split}.tsv"] = [DataSource(fmt or detect_file_format(f), split, str(f), _lang_from_name(f))
                                  for f in loose]
    if len(layouts) > 1:
        shown = "; ".join(f"{name} ({Path(found[0].path).relative_to(folder)}"
                          f"{f' and {len(found) - 1} more' if len(found) > 1 else ''})"
                          for name, found in layouts.items())
        raise DataError(folder, f"holds {split} data in {len(layouts)} layouts: {shown}; xdt reads one layout "
                        "per folder: move one into a folder of its own and pass each (repeat --data)")
    return next(iter(layouts.values()), [])


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


def read_source(source: DataSource, opts: ReadOptions, report: ReadReport,
                limit: int | None = None) -> Iterator[Sentence]:
    """The sentences of one source. Text streams; labeled sources are read whole, since telling an IOB1 file
    (converted to IOB2 here, and noted in `report.converted`) needs all of its tags. With `limit`, a source of one
    language (`source.lang` known) gives its first `limit` sentences, read alone where they settle the scheme: an
    entity opened by B- in them makes the file IOB2, and with no entity opened by I- there is nothing to convert;
    only where they look IOB1 is the rest read to tell (IOB1, or IOB2 with stray I- openings further on)."""
    path = Path(source.path)
    if source.format == "text":
        return read_text(path, opts)
    if source.format == "xtreme":
        sentences = read_conll(path, opts, source.lang, prefixed=False)
    elif source.format == "raw":
        sentences = read_conll(path, opts, source.lang, prefixed=True)
    elif source.format == "xtremedistil":
        sentences = read_xtremedistil(path, opts, report)
    elif source.format == "hf":
        lang_opts = opts if source.lang is None or opts.lang else ReadOptions(opts.labels, opts.strict, source.lang)
        sentences = read_hf(source.path, source.split, lang_opts)
    else:
        raise XdtError(f"unknown format {source.format!r}; expected one of {', '.join(FORMATS)}")
    if limit and source.lang is not None:
        sentences = iter(sentences)
        head = list(itertools.islice(sentences, limit))
        if detect_scheme(s.tags for s in head if s.tags) != "IOB1":
            return iter(head)
        return iter(as_iob2(head + list(sentences), source.path, report)[:limit])
    return iter(as_iob2(list(sentences), source.path, report))


def as_iob2(sentences: list[Sentence], where: str, report: ReadReport) -> list[Sentence]:
    """The sentences of one file with IOB1 tags converted to IOB2 (see xdt.data.scheme); others as they are."""
    if detect_scheme(s.tags for s in sentences if s.tags) != "IOB1":
        return sentences
    opened = sum(opens_with(s.tags)[1] for s in sentences if s.tags)
    report.converted.append(f"{where}: IOB1 tags read as IOB2 ({opened} entities open with I-X, none with B-X)")
    return [Sentence(s.lang, s.words, iob1_to_iob2(s.tags)) if s.tags else s for s in sentences]


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
