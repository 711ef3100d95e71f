"""The evaluation data: for each requested language, its sentences and the files they came from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from xdt.data.cache import file_digest
from xdt.data.discover import canonical_split, discover, read_source
from xdt.data.readers import ReadOptions, ReadReport
from xdt.data.sentence import Sentence
from xdt.errors import SYMLINK_LOOP, XdtError, is_symlink_loop

log = logging.getLogger(__name__)


@dataclass
class LangData:
    lang: str
    sentences: list[Sentence] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    total_sentences: int = 0  # in the files, before --max-sentences

    @property
    def words(self) -> int:
        return sum(len(s.words) for s in self.sentences)

    def tags(self) -> set[str]:
        return {t for s in self.sentences for t in (s.tags or ())}

    def content_id(self, max_sentences: int | None) -> str | None:
        """What decides the aligned features, for the cache; None when a source is not a plain file."""
        if not all(Path(f).is_file() for f in self.files):
            return None
        digests = ",".join(file_digest(f) for f in self.files)
        return f"eval|{digests}|{','.join(self.formats)}|{self.lang}|{max_sentences}"


@dataclass
class EvalData:
    languages: dict[str, LangData]  # in the requested order, found languages only
    missing: list[str]
    paths: list[str]
    split: str
    skipped: list[str]  # malformed lines the readers skipped (file:line: reason)


def load_eval_data(paths: list[str], split: str, langs: list[str] | None, fmt: str | None = None,
                   max_sentences: int | None = None) -> EvalData:
    """Read `split` for `langs` (every language found when None) from one or more data paths.

    A path given twice (as written, or relative and absolute) and a language found under two paths are errors,
    not data scored twice; a requested language found nowhere is `missing`. Tags are read as any IOB tag: they
    are checked against the model's labels by name later."""
    split = canonical_split(split)
    given: dict[str, str] = {}  # resolved -> as given
    for path in map(str, paths):
        if is_symlink_loop(path):  # Path.resolve() raises RuntimeError on it
            raise XdtError(f"--data {path}: {SYMLINK_LOOP}; expected a data file or folder")
        key = path if path.startswith("hf:") else str(Path(path).resolve())
        if key in given:
            also = f" (also as {given[key]})" if given[key] != path else ""
            raise XdtError(f"--data {path}: given twice{also}; pass each data path once")
        given[key] = path
    opts = ReadOptions(labels=None)
    report = ReadReport()
    wanted = set(langs) if langs else None
    found: dict[str, LangData] = {}
    owner: dict[str, str] = {}  # lang -> the data path it came from
    for path in paths:
        for source in discover(path, split, fmt):
            if wanted is not None and source.lang is not None and source.lang not in wanted:
                continue
            per_source: dict[str, list[Sentence]] = {}
            for sentence in read_source(source, opts, report):
                if sentence.tags is None:
                    raise XdtError(f"{source.path}: unlabeled text (format {source.format}); evaluation needs "
                                   "tagged sentences (token<TAB>tag)")
                if wanted is None or sentence.lang in wanted:
                    per_source.setdefault(sentence.lang, []).append(sentence)
            for lang, sentences in per_source.items():
                if owner.setdefault(lang, path) != path:
                    raise XdtError(f"language {lang!r} has {split} data under two paths, {owner[lang]} and {path} "
                                   f"({source.path}); pass each language once")
                data = found.setdefault(lang, LangData(lang))
                data.sentences += sentences
                data.files.append(source.path)
                data.formats.append(source.format)
    for line in report.converted:  # a correct reading, but the user should know the file is not IOB2
        log.warning("converted %s", line)
    order = list(langs) if langs else sorted(found)
    languages: dict[str, LangData] = {}
    for lang in order:
        if lang in found:
            data = found[lang]
            data.total_sentences = len(data.sentences)
            if max_sentences is not None:
                data.sentences = data.sentences[:max_sentences]
            languages[lang] = data
    missing = [lang for lang in order if lang not in found]
    return EvalData(languages=languages, missing=missing, paths=[str(p) for p in paths], split=split,
                    skipped=report.skipped)
