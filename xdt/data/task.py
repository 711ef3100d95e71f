"""The data of a training run: labeled train, per-language dev, the transfer set, aligned once and cached."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xdt.config import RunConfig
from xdt.data.align import AlignedFeatures, Aligner
from xdt.data.cache import align_cached, default_cache_dir, file_digest
from xdt.data.discover import discover, read_source
from xdt.data.readers import ReadOptions, ReadReport
from xdt.data.sentence import WIKIANN_LABELS, Sentence
from xdt.data.tokenizer import tokenizer_fingerprint
from xdt.data.word_bridge import WordBridge
from xdt.errors import DataError, XdtError

log = logging.getLogger(__name__)


@dataclass
class SplitData:
    sentences: list[Sentence]
    features: AlignedFeatures
    langs: list[str]  # languages in sentence order, one per sentence


@dataclass
class TeacherView:
    """The same sentences aligned with the teacher's own tokenizer, where it is not the student's."""

    tokenizer: object
    train: SplitData  # labeled: what the teacher is fine-tuned on
    dev: dict[str, SplitData]
    bridges: dict[str, WordBridge]  # "transfer", "labeled": student word slots -> teacher sub-word spans


@dataclass
class TaskData:
    labels: list[str]
    tokenizer: object  # the student's
    train: SplitData
    dev: dict[str, SplitData]  # per language: model selection is on the mean dev F1 over languages
    transfer: SplitData  # unlabeled: the transfer set, or the train sentences with their labels ignored
    skipped: list[str]
    teacher: TeacherView | None = None  # None: the teacher shares the student's tokenizer

    @property
    def label2id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.labels)}

    @property
    def cross_tokenizer(self) -> bool:
        return self.teacher is not None

    @property
    def teacher_tokenizer(self):
        return self.teacher.tokenizer if self.teacher is not None else self.tokenizer

    def for_teacher(self) -> TaskData:
        """This data as the teacher sees it: its tokenizer, its windows (for `xdt teacher train`)."""
        if self.teacher is None:
            return self
        return TaskData(self.labels, self.teacher.tokenizer, self.teacher.train, self.teacher.dev, self.transfer,
                        self.skipped)


def label_set(sentences: list[Sentence]) -> list[str]:
    """WikiAnn's order when the tags are WikiAnn's, else O first and the rest sorted."""
    tags = {t for s in sentences for t in (s.tags or ())}
    if tags <= set(WIKIANN_LABELS):
        return list(WIKIANN_LABELS)
    return ["O"] + sorted(tags - {"O"})


def _read(path: str, split: str, langs: list[str] | None, cfg: RunConfig, report: ReadReport,
          limit: int | None = None) -> tuple[list[Sentence], str | None]:
    """Sentences of one split (the first `limit` per language, default `data.limit`), and a content id for the
    cache (None when a source is not a plain file)."""
    opts = ReadOptions(strict=cfg.data.strict)
    wanted = set(langs) if langs else None
    limit = cfg.data.limit if limit is None else limit
    sentences: list[Sentence] = []
    per_lang: dict[str, int] = {}
    digests = []
    for source in discover(path, split, cfg.data.format):
        if wanted is not None and source.lang is not None and source.lang not in wanted:
            continue
        for s in read_source(source, opts, report, limit):
            if (wanted is None or s.lang in wanted) and (not limit or per_lang.get(s.lang, 0) < limit):
                per_lang[s.lang] = per_lang.get(s.lang, 0) + 1
                sentences.append(s)
        digests.append(file_digest(source.path) if Path(source.path).is_file() else None)
    if not sentences:
        raise DataError(path, f"no sentences for split {split!r}" + (f" in languages {langs}" if langs else ""))
    content = None if None in digests else f"{','.join(digests)}|{split}|{sorted(wanted or [])}|{limit}"
    return sentences, content


def _split_data(sentences: list[Sentence], aligner: Aligner, content: str | None, cache: Path | None
                ) -> SplitData:
    return SplitData(sentences, align_cached(sentences, aligner, content, cache), [s.lang for s in sentences])


def read_transfer_sentences(path: str) -> tuple[list[Sentence], str]:
    """A transfer set: JSONL of `xdt transfer build` ({"lang", "words", ...}) or unlabeled text."""
    p = Path(path)
    if p.is_dir() or p.suffix in (".jsonl", ".json"):
        from xdt.transfer.build import TRANSFER_FILE, read_transfer

        sentences = [Sentence(r["lang"], tuple(r["words"]), None) for r in read_transfer(p)]
        # the key is the file read_transfer read (DIR/transfer.jsonl), never another *.jsonl beside it
        content = file_digest(p / TRANSFER_FILE if p.is_dir() else p)
    else:
        sentences = [s for source in discover(p) for s in read_source(source, ReadOptions(), ReadReport())]
        content = file_digest(p)
    if not sentences:
        raise DataError(path, "transfer set holds no sentences")
    return [Sentence(s.lang, s.words, None) for s in sentences], f"transfer|{content}"


def load_task_data(cfg: RunConfig, data_path: str, tokenizer, labels: list[str] | None = None,
                   need_transfer: bool = True, teacher_tokenizer=None) -> TaskData:
    """Every split aligned with the student's `tokenizer`; where `teacher_tokenizer` is another tokenizer, aligned
    with it too, and each word of the student's windows bridged to the teacher's (`TaskData.teacher`)."""
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir()
    report = ReadReport()
    train, train_id = _read(data_path, cfg.data.train_split, cfg.data.langs, cfg, report)
    labels = labels or label_set(train)
    aligner = Aligner(tokenizer, cfg.data.max_seq_length, {t: i for i, t in enumerate(labels)})
    train_data = _split_data(train, aligner, train_id, cache)

    dev_sentences, dev_id = _read(data_path, cfg.data.dev_split, cfg.data.langs, cfg, report, cfg.data.dev_limit)
    dev: dict[str, SplitData] = {}
    for lang in sorted({s.lang for s in dev_sentences}):
        part = [s for s in dev_sentences if s.lang == lang]
        dev[lang] = _split_data(part, aligner, f"{dev_id}|{lang}" if dev_id else None, cache)

    transfer_id = None
    if cfg.data.transfer and need_transfer:
        sentences, transfer_id = read_transfer_sentences(cfg.data.transfer)
        transfer = _split_data(sentences, Aligner(tokenizer, cfg.data.max_seq_length), transfer_id, cache)
    else:  # the paper's transfer data: the labeled training text with its labels ignored
        transfer = SplitData(train, _unlabeled(train_data.features), train_data.langs)
    view = None
    if teacher_tokenizer is not None and tokenizer_fingerprint(teacher_tokenizer) != tokenizer_fingerprint(tokenizer):
        t_aligner = Aligner(teacher_tokenizer, cfg.data.max_seq_length, aligner.label2id)
        t_train = _split_data(train, t_aligner, train_id, cache)
        t_dev = {lang: _split_data(split.sentences, t_aligner, f"{dev_id}|{lang}" if dev_id else None, cache)
                 for lang, split in dev.items()}
        if transfer_id is not None:
            t_transfer = align_cached(transfer.sentences, Aligner(teacher_tokenizer, cfg.data.max_seq_length),
                                      transfer_id, cache)
        else:
            t_transfer = _unlabeled(t_train.features)
        view = TeacherView(teacher_tokenizer, t_train, t_dev,
                           {"transfer": WordBridge.build(transfer.features, t_transfer),
                            "labeled": WordBridge.build(train_data.features, t_train.features)})
    for line in report.skipped:
        log.warning("skipped %s", line)
    for line in report.converted:
        log.warning("converted %s", line)
    if not dev:
        raise XdtError(f"{data_path}: no dev sentences; model selection needs a dev split ({cfg.data.dev_split})")
    return TaskData(labels, tokenizer, train_data, dev, transfer, report.skipped, view)


def _unlabeled(features: AlignedFeatures) -> AlignedFeatures:
    return AlignedFeatures(**{**features.__dict__, "labels": np.full_like(features.labels, -100)})
