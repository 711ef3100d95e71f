"""Sequence classification data: `text<TAB>label` or `a<TAB>b<TAB>label` files -> features -> padded batches.

The task-agnostic route of XtremeDistilTransformers: a source task such as MNLI (sentence pairs) is distilled into
a universal student that is then fine-tuned on a target task. The path of the data is NER's, one level simpler:

    files -> `Example(lang, text_a, text_b, label)` -> `ClassificationFeatures` (ragged token arrays, one label per
    example) -> `ClassificationBatcher` (length-bucketed, rank-sharded, the dict layout of `WindowBatcher`)

Files. A split is `{split}-{lang}.tsv` (one file per language, XTREME's naming) or `{split}.tsv` in the data folder.
Each file holds one format, told by the number of tab-separated fields of its first line: 2 = `text<TAB>label`,
3 = `sentence1<TAB>sentence2<TAB>label`; every line must have that many. A first line whose last field is
literally `label` (e.g. `sentence<TAB>label`) is a header and skipped. Blank lines are skipped. Unlabeled files
(transfer sets) hold `text` or `a<TAB>b` lines. Every problem is one `DataError` naming `file:line`.

Batches. `input_ids`, `attention_mask`, `token_type_ids` [B, T], `labels` [B] (class ids, -100 = unlabeled),
`word_index` [B, T] and `window` [B]. `word_index` is 0 on [CLS] and -1 elsewhere, so the distillation mask
(`word_index >= 0`) selects [CLS] for the hidden and attention terms (`positions="tokens"` selects every real
token instead); the logits of a sequence classifier are [B, C] and use every row.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from xdt.data.align import IGNORE_INDEX
from xdt.data.batching import WindowBatcher
from xdt.data.readers import UNDETERMINED_LANG, iter_lines
from xdt.errors import DataError, XdtError

log = logging.getLogger(__name__)

FORMATS = {2: "text<TAB>label", 3: "sentence1<TAB>sentence2<TAB>label"}
UNLABELED_FORMATS = {1: "text", 2: "sentence1<TAB>sentence2"}
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_LANG_FILE = re.compile(r"^(?P<split>.+)-(?P<lang>[A-Za-z0-9_]+)\.tsv$")


@dataclass(frozen=True)
class Example:
    lang: str
    text_a: str
    text_b: str | None  # None: a single-sentence task
    label: str | None  # None: unlabeled (a transfer set)


# --------------------------------------------------------------------------------------------- reading


def read_classification(path: str | Path, lang: str | None = None, labels: Sequence[str] | None = None,
                        unlabeled: bool = False) -> list[Example]:
    """Examples of one file. `labels`: the allowed label names (None: any). `unlabeled`: `text` / `a<TAB>b` lines
    (labels, if a file has them, are not expected: use the labeled form for such files)."""
    path = Path(path)
    formats = UNLABELED_FORMATS if unlabeled else FORMATS
    allowed = set(labels) if labels is not None else None
    lang = lang or UNDETERMINED_LANG
    examples: list[Example] = []
    width: int | None = None
    first_line = 0
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if width is None and not unlabeled and fields[-1].strip() == "label" and len(fields) in formats:
            continue  # header: sentence<TAB>label, sentence1<TAB>sentence2<TAB>label
        if width is None:
            if len(fields) not in formats:
                raise DataError(path, f"{len(fields)} tab-separated field(s); expected "
                                f"{' or '.join(formats.values())}", lineno)
            width, first_line = len(fields), lineno
        elif len(fields) != width:
            raise DataError(path, f"{len(fields)} tab-separated field(s), but line {first_line} has {width} "
                            f"({formats[width]}); every line of a file needs the same format", lineno)
        fields = [f.strip() for f in fields]
        for i, value in enumerate(fields):
            if not value:
                name = formats[width].split("<TAB>")[i]
                raise DataError(path, f"empty {name} field (field {i + 1} of {formats[width]})", lineno)
        label = None if unlabeled else fields[-1]
        texts = fields if unlabeled else fields[:-1]
        if allowed is not None and label not in allowed:
            raise DataError(path, f"unknown label {label!r}; expected one of {', '.join(labels)}", lineno)
        examples.append(Example(lang, texts[0], texts[1] if len(texts) == 2 else None, label))
    if not examples:
        raise DataError(path, "no examples (only a header or blank lines)")
    return examples


def split_files(root: str | Path, split: str, langs: Sequence[str] | None = None) -> list[tuple[str | None, Path]]:
    """(language or None, file) of a split: `{split}-{lang}.tsv` files, else `{split}.tsv`."""
    root = Path(root)
    if root.is_file():  # one file cannot hold both train and dev: model selection would see the training data
        raise DataError(root, f"expected a data folder holding {split}.tsv or {split}-{{lang}}.tsv, got a file")
    if not root.is_dir():
        raise DataError(root, "data folder not found")
    per_lang = {}
    for p in sorted(root.glob(f"{glob.escape(split)}-*.tsv")):
        m = _LANG_FILE.match(p.name)
        if m and m["split"] == split:
            per_lang[m["lang"]] = p
    if per_lang:
        if langs:
            missing = [lang for lang in langs if lang not in per_lang]
            if missing:
                raise DataError(root, f"no {split}-{{lang}}.tsv for language(s) {', '.join(missing)}; found "
                                f"{', '.join(sorted(per_lang))}")
            return [(lang, per_lang[lang]) for lang in langs]
        return sorted(per_lang.items())
    single = root / f"{split}.tsv"
    if single.is_file():
        return [(None, single)]
    raise DataError(root, f"no {split}.tsv or {split}-{{lang}}.tsv files for split {split!r}")


def read_split(root: str | Path, split: str, langs: Sequence[str] | None = None,
               labels: Sequence[str] | None = None, limit: int = 0, unlabeled: bool = False) -> list[Example]:
    """Every example of a split, in file order; `limit` > 0 keeps the first N per language."""
    out: list[Example] = []
    for lang, path in split_files(root, split, langs):
        examples = read_classification(path, lang, labels, unlabeled)
        out += examples[:limit] if limit else examples
    return out


def label_set(examples: Sequence[Example]) -> list[str]:
    """The label names of `examples`, sorted (give the order explicitly to keep a published one, e.g. MNLI's)."""
    names = sorted({e.label for e in examples if e.label is not None})
    if not names:
        raise XdtError("no labeled examples: cannot infer the label set")
    return names


# --------------------------------------------------------------------------------------------- features


@dataclass
class ClassificationFeatures:
    """Ragged examples stored flat: example k spans `offsets[k]:offsets[k+1]` of the per-token arrays.

    `num_windows` / `window_lengths()` name examples as `AlignedFeatures` names windows, so the batching and the
    stage loop treat both alike (one example is one window: a pair never splits).
    """

    input_ids: np.ndarray  # int32 [tokens], [CLS] a [SEP] (b [SEP])
    token_type_ids: np.ndarray  # int8 [tokens], 0 for [CLS] a [SEP], 1 for b [SEP]
    offsets: np.ndarray  # int64 [examples + 1]
    labels: np.ndarray  # int64 [examples], class id or IGNORE_INDEX
    truncated: np.ndarray  # bool [examples], sub-words were cut to fit max_seq_length

    @property
    def num_windows(self) -> int:
        return len(self.offsets) - 1

    def window_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def featurize(examples: Sequence[Example], tokenizer, max_seq_length: int,
              label2id: dict[str, int] | None = None, batch_size: int = 2048) -> ClassificationFeatures:
    """Tokenize with the fast tokenizer's own pair template; pairs are cut `longest_first` (the longer segment
    loses a sub-word at a time) to `max_seq_length`. Without `label2id` every label is IGNORE_INDEX."""
    if not getattr(tokenizer, "is_fast", False):
        raise XdtError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer")
    if max_seq_length < 4:
        raise XdtError(f"max_seq_length {max_seq_length}: expected at least 4 ([CLS] a [SEP] b [SEP] needs 5)")
    ids: list[np.ndarray] = []
    types: list[np.ndarray] = []
    truncated = np.zeros(len(examples), bool)
    for start in range(0, len(examples), batch_size):
        part = examples[start:start + batch_size]
        pairs = [e.text_b is not None for e in part]
        if any(pairs) and not all(pairs):
            raise XdtError("featurize: a batch mixes single sentences and pairs; one task has one format")
        enc = tokenizer([e.text_a for e in part], [e.text_b for e in part] if all(pairs) else None,
                        truncation="longest_first", max_length=max_seq_length, return_token_type_ids=True,
                        return_attention_mask=False)
        for i, encoding in enumerate(enc.encodings):
            ids.append(np.asarray(encoding.ids, np.int32))
            types.append(np.asarray(encoding.type_ids, np.int8))
            truncated[start + i] = bool(encoding.overflowing)
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    offsets = np.zeros(len(ids) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    labels = np.full(len(examples), IGNORE_INDEX, np.int64)
    if label2id is not None:
        for k, e in enumerate(examples):
            if e.label is not None:
                if e.label not in label2id:
                    raise XdtError(f"example {k} ({e.lang}): label {e.label!r} is not among the model's labels "
                                   f"{sorted(label2id)}")
                labels[k] = label2id[e.label]
    if truncated.any():
        log.info("%d of %d examples cut to max_seq_length %d", int(truncated.sum()), len(examples), max_seq_length)
    empty = np.zeros(0, np.int32)
    return ClassificationFeatures(np.concatenate(ids) if ids else empty,
                                  np.concatenate(types) if types else empty.astype(np.int8),
                                  offsets, labels, truncated)


# --------------------------------------------------------------------------------------------- batches


@dataclass
class ClassificationBatcher(WindowBatcher):
    """`WindowBatcher`'s bucketing, sharding and resume over examples, with their own padded tensors."""

    features: ClassificationFeatures
    pad_id: int
    positions: Literal["cls", "tokens"] = "cls"  # what `word_index >= 0` selects for hidden/attention losses

    def collate(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        f = self.features
        starts = f.offsets[rows]
        lengths = f.offsets[rows + 1] - starts
        n, width = len(rows), int(lengths.max())
        input_ids = np.full((n, width), self.pad_id, np.int64)
        token_types = np.zeros((n, width), np.int64)
        attention = np.zeros((n, width), np.int64)
        for row, (lo, length) in enumerate(zip(starts, lengths)):
            input_ids[row, :length] = f.input_ids[lo:lo + length]
            token_types[row, :length] = f.token_type_ids[lo:lo + length]
            attention[row, :length] = 1
        if self.positions == "cls":
            word_index = np.full((n, width), -1, np.int64)
            word_index[:, 0] = 0
        else:
            word_index = np.where(attention > 0, np.arange(width)[None, :], -1)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "token_type_ids": torch.from_numpy(token_types),
            "labels": torch.from_numpy(f.labels[rows].astype(np.int64)),
            "word_index": torch.from_numpy(word_index),
            "window": torch.from_numpy(np.asarray(rows, np.int64)),
        }


def model_inputs(batch: dict) -> dict:
    """The encoder inputs of a batch (of this batcher or `WindowBatcher`): ids, attention mask and, when the batch
    has them, token types (sentence pairs)."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


# --------------------------------------------------------------------------------------------- a run's data


@dataclass
class ClassificationSplit:
    examples: list[Example]
    features: ClassificationFeatures
    langs: list[str]  # one per example


@dataclass
class ClassificationData:
    """What `TaskData` is for NER: labels, tokenizer, train, per-language dev, the transfer set."""

    labels: list[str]
    tokenizer: object
    train: ClassificationSplit
    dev: dict[str, ClassificationSplit]  # model selection: mean over languages of dev accuracy
    transfer: ClassificationSplit  # unlabeled: a transfer file, or the train examples with labels ignored

    @property
    def label2id(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.labels)}

    # the sequence task has one tokenizer: a teacher with another is refused when the data loads (xdt.recipes.setup.prepare)
    teacher = None
    cross_tokenizer = False

    @property
    def teacher_tokenizer(self):
        return self.tokenizer


def make_split(examples: list[Example], tokenizer, max_seq_length: int,
               label2id: dict[str, int] | None) -> ClassificationSplit:
    return ClassificationSplit(examples, featurize(examples, tokenizer, max_seq_length, label2id),
                               [e.lang for e in examples])


def load_classification_data(cfg, data_path: str | Path, tokenizer, labels: Sequence[str] | None = None,
                             need_transfer: bool = True) -> ClassificationData:
    """Train, per-language dev and transfer data of a run config (`cfg.data.*`: splits, langs, limit,
    max_seq_length, transfer). `labels`: the label order (None: sorted names of the train labels)."""
    d = cfg.data
    train = read_split(data_path, d.train_split, d.langs, labels, d.limit)
    labels = list(labels) if labels is not None else label_set(train)
    label2id = {t: i for i, t in enumerate(labels)}
    train_split = make_split(train, tokenizer, d.max_seq_length, label2id)
    dev = per_language_split(cfg, data_path, tokenizer, labels, d.dev_split)
    if d.transfer and need_transfer:
        transfer = make_split(read_transfer(d.transfer), tokenizer, d.max_seq_length, None)
    else:  # the source task's own text, labels ignored
        unlabeled = ClassificationFeatures(**{**train_split.features.__dict__,
                                              "labels": np.full(len(train), IGNORE_INDEX, np.int64)})
        transfer = ClassificationSplit(train, unlabeled, train_split.langs)
    return ClassificationData(labels, tokenizer, train_split, dev, transfer)


def per_language_split(cfg, data_path: str | Path, tokenizer, labels: Sequence[str], split: str,
                       limit: int | None = None) -> dict[str, ClassificationSplit]:
    """One split (dev, test) by language, for per-language scores (`xdt.eval.classify.dev_accuracy`).
    `limit`: examples per language (None: `cfg.data.limit`, which applies to train and dev; 0: all)."""
    d = cfg.data
    examples = read_split(data_path, split, d.langs, labels, d.limit if limit is None else limit)
    label2id = {t: i for i, t in enumerate(labels)}
    return {lang: make_split([e for e in examples if e.lang == lang], tokenizer, d.max_seq_length, label2id)
            for lang in sorted({e.lang for e in examples})}


def read_transfer(path: str | Path) -> list[Example]:
    """Unlabeled examples: a `.tsv` file or folder of `text` / `a<TAB>b` lines (labels not read)."""
    p = Path(path)
    files = sorted(p.glob("*.tsv")) if p.is_dir() else [p]
    if not files:
        raise DataError(p, "no *.tsv transfer files in this folder")
    out: list[Example] = []
    for f in files:
        m = _LANG_FILE.match(f.name)
        examples = read_classification(f, m["lang"] if m else None, unlabeled=True)
        if out and (examples[0].text_b is None) != (out[0].text_b is None):
            raise DataError(f, f"holds {'single sentences' if examples[0].text_b is None else 'pairs'}, "
                            f"{files[0].name} the other format; a transfer set has the task's one format")
        out += examples
    return out
