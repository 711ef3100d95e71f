"""Readers for every format WikiAnn comes in, each yielding `Sentence(lang, words, tags)`.

Formats (names used by `--format` and the `data.format` config key):

- `xtreme`        `{split}-{lang}.tsv`: `token<TAB>tag` per line, a blank line between sentences.
- `raw`           Rahimi et al.'s files `{lang}/{split}`: `lang:token<TAB>tag`, a blank line after each sentence.
- `xtremedistil`  XtremeDistil's `sentence<TAB>tags` lines; tags may carry `lang:`; a line whose tag count differs
                  from its token count is reported (file:line) and skipped, or fails under `strict`.
- `hf`            the HF `wikiann` dataset: a `save_to_disk` folder, parquet files, or `hf:wikiann/<lang>` (hub,
                  online only). Integer labels are mapped by the dataset's own ClassLabel names, never by position.
- `text`          unlabeled text, one sentence per line, optionally `lang<TAB>text`.

Every problem with a file is one `DataError` naming `file:line` and what was expected.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xdt.config import DATA_FORMATS
from xdt.data.sentence import HF_WIKIANN_LABEL_ORDER, WIKIANN_LABELS, Sentence, is_iob_tag
from xdt.errors import SYMLINK_LOOP, DataError, is_symlink_loop

log = logging.getLogger(__name__)

FORMATS = DATA_FORMATS
UNDETERMINED_LANG = "und"  # ISO 639 code for a sentence whose language no field names
LANG_PREFIX = re.compile(r"^([a-z]{2,3}(?:[-_][A-Za-z]+)?):.")  # `bs:word` of the raw format


@dataclass
class ReadReport:
    """What a reader skipped, so the caller can print it: one `file:line: reason` per skipped line."""

    skipped: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # `file: IOB1 tags read as IOB2 (...)`, one per file

    def skip(self, path: Path | str, line: int, reason: str) -> None:
        self.skipped.append(f"{path}:{line}: {reason}")


@dataclass(frozen=True)
class ReadOptions:
    labels: tuple[str, ...] | None = WIKIANN_LABELS  # allowed tags; None accepts any IOB-shaped tag
    strict: bool = False  # fail instead of skipping malformed xtremedistil lines
    lang: str | None = None  # language for files whose lines do not name one


def _check_tag(tag: str, opts: ReadOptions, path: Path, lineno: int) -> None:
    known = tag in opts.labels if opts.labels is not None else is_iob_tag(tag)
    if not known:
        expected = f"one of {' '.join(opts.labels)}" if opts.labels is not None else "an IOB tag (O, B-X, I-X)"
        raise DataError(path, f"unknown tag {tag!r}; expected {expected}", lineno)


_LINE_END = re.compile(rb"\r\n|\r|\n")


def _universal_lines(f) -> Iterator[bytes]:
    """The lines of a binary file with LF, CRLF and a lone CR (old Mac files) all ending a line, as Python's text
    mode reads them: a CR-only file is not one long line whose faults are all blamed on line 1."""
    for raw in f:
        if raw.find(b"\r") in (-1, len(raw) - 2):  # no CR, or only the one of a CRLF ending
            yield raw
            continue
        start = 0
        for m in _LINE_END.finditer(raw):
            yield raw[start:m.end()]
            start = m.end()
        if start < len(raw):
            yield raw[start:]


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text without the newline) for a UTF-8 text file; refuses missing, empty and binary files,
    and (once the lines run out) a file whose lines are all blank, which would otherwise read as no data at all."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, f"{SYMLINK_LOOP}; expected a file" if is_symlink_loop(path) else "file not found")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty")
    seen_text = False
    lineno = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(_universal_lines(f), 1):
            if b"\x00" in raw:
                raise DataError(path, "binary file (NUL byte); expected UTF-8 text", lineno)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(
                    path, f"invalid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})", lineno
                ) from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            text = text.rstrip("\r\n")
            seen_text = seen_text or bool(text.strip())
            yield lineno, text
    if not seen_text:
        raise DataError(path, f"file has only blank lines ({lineno} line(s)): no sentences to read")


def read_conll(path: Path, opts: ReadOptions, lang: str | None, prefixed: bool) -> Iterator[Sentence]:
    """`token<TAB>tag` blocks separated by blank lines (`xtreme`), or `lang:token<TAB>tag` (`raw`).

    Read as `xtreme`, a file where half or more of the tokens carry one `lang:` prefix is raw data and refused:
    read as it is, every word would keep its `bs:` glued on."""
    words: list[str] = []
    tags: list[str] = []
    sent_lang = lang
    start = 0
    tokens = 0
    prefixes: Counter = Counter()
    first_prefixed: dict[str, int] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            if words:
                yield Sentence(sent_lang or opts.lang or UNDETERMINED_LANG, tuple(words), tuple(tags))
                words, tags = [], []
            continue
        if not words:
            start = lineno
        token, tab, tag = line.partition("\t")
        if not tab:
            expected = "lang:token<TAB>tag" if prefixed else "token<TAB>tag"
            raise DataError(path, f"line has no tab; expected {expected}", lineno)
        if "\t" in tag:
            raise DataError(path, "more than two tab-separated fields; expected token<TAB>tag", lineno)
        tag = tag.strip()
        if prefixed:
            prefix, colon, token = token.partition(":")
            if not colon or not prefix:
                raise DataError(path, f"token {line.partition(chr(9))[0]!r} has no language prefix; "
                                "expected lang:token<TAB>tag", lineno)
            if words and prefix != sent_lang:
                raise DataError(path, f"language prefix {prefix!r} differs from {sent_lang!r} of the sentence "
                                f"that starts at line {start}", lineno)
            sent_lang = prefix
        elif m := LANG_PREFIX.match(token):
            prefixes[m.group(1)] += 1
            first_prefixed.setdefault(m.group(1), lineno)
        if token == "":
            raise DataError(path, "empty token before the tab", lineno)
        _check_tag(tag, opts, path, lineno)
        tokens += 1
        words.append(token)
        tags.append(tag)
    if prefixes:
        top, count = prefixes.most_common(1)[0]
        if 2 * count >= tokens:
            raise DataError(path, f"{count} of {tokens} tokens start with the language prefix '{top}:' (first at "
                            f"line {first_prefixed[top]}): this is the raw format lang:token<TAB>tag, not "
                            "token<TAB>tag; read it as --format raw (data.format: raw)")
    if words:
        yield Sentence(sent_lang or opts.lang or UNDETERMINED_LANG, tuple(words), tuple(tags))


def read_xtremedistil(path: Path, opts: ReadOptions, report: ReadReport) -> Iterator[Sentence]:
    """`w1 w2 ...<TAB>[lang:]T1 [lang:]T2 ...` per line, XtremeDistil's own format.

    One-token lines in blocks between blank lines are `token<TAB>tag` data (XtremeDistil's files have no blank
    lines): a block of two or more, or a file of mostly such lines, is refused, since read as XtremeDistil's every
    word would be a sentence of its own."""
    lines = single = blocks = 0  # blocks: runs of sentence lines between blank lines
    block_start = block_lines = 0
    block_single = True
    token_block = None  # first line of the first block of two or more lines, all of one token

    def end_block() -> None:
        nonlocal token_block
        if block_single and block_lines >= 2 and token_block is None:
            token_block = block_start

    for lineno, line in iter_lines(path):
        if not line.strip():
            end_block()
            block_lines = 0
            continue
        if block_lines == 0:
            blocks += 1
            block_start, block_single = lineno, True
        text, tab, tag_field = line.partition("\t")
        if not tab:
            raise DataError(path, "line has no tab; expected sentence<TAB>tags", lineno)
        words = text.split()
        raw_tags = tag_field.split()
        lines += 1
        block_lines += 1
        one = len(words) == 1 and len(raw_tags) == 1
        single += one
        block_single = block_single and one
        if len(words) != len(raw_tags):
            reason = f"{len(words)} tokens but {len(raw_tags)} tags"
            if opts.strict:
                raise DataError(path, f"{reason} (strict mode)", lineno)
            report.skip(path, lineno, reason)
            continue
        lang = opts.lang or UNDETERMINED_LANG
        tags = []
        for i, raw_tag in enumerate(raw_tags):
            prefix, colon, tag = raw_tag.rpartition(":")
            if colon:
                if i == 0:
                    lang = prefix
                elif prefix != lang:
                    raise DataError(path, f"tag {raw_tag!r} names language {prefix!r}, the line's first tag "
                                    f"names {lang!r}", lineno)
            _check_tag(tag, opts, path, lineno)
            tags.append(tag)
        yield Sentence(lang, tuple(words), tuple(tags))
    end_block()
    if blocks >= 2 and (token_block is not None or 2 * single >= lines):
        where = f" (a block of them from line {token_block})" if token_block is not None else ""
        raise DataError(path, f"{single} of {lines} lines hold one token and one tag, in blocks separated by blank "
                        f"lines{where}: this is token<TAB>tag data (xtreme or raw format), not XtremeDistil's "
                        "sentence<TAB>tags; read it as --format xtreme or raw")


def read_text(path: Path, opts: ReadOptions) -> Iterator[Sentence]:
    """Unlabeled text: one whitespace-tokenized sentence per line, optionally `lang<TAB>text`.

    A file whose lines are mostly `word<TAB>TAG` (an IOB tag after the tab) is labeled data and refused: read as
    text, each word would become a language code and each tag a sentence."""
    lines = tagged = 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        lang = opts.lang or UNDETERMINED_LANG
        text = line
        lines += 1
        if "\t" in line:
            lang, _, text = line.partition("\t")
            lang = lang.strip()
            if not lang or " " in lang or len(lang) > 12 or "\t" in text:
                raise DataError(path, "expected text or lang<TAB>text (one tab, a language code before it)",
                                lineno)
            tagged += is_iob_tag(text.strip())
        words = text.split()
        if words:
            yield Sentence(lang, tuple(words), None)
    if 2 * tagged > lines:
        raise DataError(path, f"{tagged} of {lines} lines are token<TAB>tag (an IOB tag after the tab): this is "
                        "labeled data, not text; read it as --format xtreme or raw")


def read_hf(source: str | Path, split: str, opts: ReadOptions) -> Iterator[Sentence]:
    """The HF `wikiann` dataset: `save_to_disk` folder, parquet file(s), or `hf:NAME/CONFIG` from the hub."""
    from xdt.data.hf_dataset import load_hf_split

    dataset, label_names, where = load_hf_split(source, split)
    for column in ("tokens", "ner_tags"):
        if column not in dataset.column_names:
            raise DataError(where, f"dataset has no {column!r} column; columns: {', '.join(dataset.column_names)}")
    has_langs = "langs" in dataset.column_names
    for index, row in enumerate(dataset):
        raw_tags = row["ner_tags"]
        if raw_tags and isinstance(raw_tags[0], int):
            try:
                tags = tuple(label_names[t] for t in raw_tags)
            except IndexError:
                raise DataError(where, f"row {index}: label id out of range for ClassLabel names "
                                f"{list(label_names)}") from None
        else:
            tags = tuple(raw_tags)
        for tag in tags:
            _check_tag(tag, opts, Path(f"{where} row"), index)
        lang = row["langs"][0] if has_langs and row["langs"] else (opts.lang or UNDETERMINED_LANG)
        yield Sentence(lang, tuple(row["tokens"]), tags)


__all__ = [
    "FORMATS",
    "HF_WIKIANN_LABEL_ORDER",
    "ReadOptions",
    "ReadReport",
    "iter_lines",
    "read_conll",
    "read_hf",
    "read_text",
    "read_xtremedistil",
]
