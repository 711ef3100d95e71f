"""`xdt data inspect`: what a data path holds, per split and language, and how it aligns to a tokenizer."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from seqeval.metrics.sequence_labeling import get_entities

from xdt.data.align import Aligner
from xdt.data.cache import align_cached, file_digest
from xdt.data.discover import canonical_split, discover, read_source
from xdt.data.manifest import MANIFEST, verify_manifest
from xdt.data.readers import ReadOptions, ReadReport
from xdt.data.scheme import opens_with
from xdt.data.sentence import Sentence

PERCENTILES = (50, 90, 95, 99)


@dataclass
class _LangAccumulator:
    sentences: int = 0
    words: int = 0
    labeled: bool = False
    tags: Counter = field(default_factory=Counter)
    entities: int = 0  # as seqeval's default mode (conlleval) reads them, the headline F1's count
    repairs: int = 0  # entities opened by I-X (after O or another type): read as B-X by default, dropped by strict
    aligned_words: int = 0
    unk_words: int = 0
    truncated_words: int = 0
    windows: int = 0
    subword_lengths: list[np.ndarray] = field(default_factory=list)

    def add_sentences(self, sentences: list[Sentence]) -> None:
        self.sentences += len(sentences)
        tagged = [list(s.tags) for s in sentences if s.tags is not None]
        for s in sentences:
            self.words += len(s.words)
        for tags in tagged:
            self.labeled = True
            self.tags.update(tags)
            self.repairs += opens_with(tags)[1]
        self.entities += len(get_entities(tagged)) if tagged else 0

    def merge(self, other: _LangAccumulator) -> None:
        self.sentences += other.sentences
        self.words += other.words
        self.labeled |= other.labeled
        self.tags.update(other.tags)
        self.entities += other.entities
        self.repairs += other.repairs
        self.aligned_words += other.aligned_words
        self.unk_words += other.unk_words
        self.truncated_words += other.truncated_words
        self.windows += other.windows
        self.subword_lengths += other.subword_lengths

    def to_json(self, aligned: bool) -> dict:
        out: dict = {"sentences": self.sentences, "words": self.words, "labeled": self.labeled,
                     "tags": dict(sorted(self.tags.items()))}
        if self.labeled:
            out["entities"] = self.entities
            out["repairs"] = self.repairs
        if aligned:
            lengths = np.concatenate(self.subword_lengths) if self.subword_lengths else np.zeros(0, np.int32)
            out.update({
                "aligned_words": self.aligned_words,
                "unk_words": self.unk_words,
                "truncated_words": self.truncated_words,
                "windows": self.windows,
                "split_sentences": self.windows - self.sentences,
                "subword_length": {
                    **{f"p{p}": round(float(np.percentile(lengths, p)), 2) if len(lengths) else 0.0
                       for p in PERCENTILES},
                    "max": int(lengths.max()) if len(lengths) else 0,
                    "mean": round(float(lengths.mean()), 3) if len(lengths) else 0.0,
                },
            })
        return out


def inspect_data(path: str | Path, split: str | None = None, langs: list[str] | None = None,
                 fmt: str | None = None, opts: ReadOptions | None = None, aligner: Aligner | None = None,
                 cache_dir: Path | None = None) -> dict:
    opts = opts or ReadOptions()
    report = ReadReport()
    wanted = set(langs) if langs else None
    # A folder from `xdt data fetch` is checked against its manifest first: a changed file is named as changed,
    # not only as whatever the reader trips over in it.
    check = None
    if not str(path).startswith("hf:") and Path(path).is_dir():
        check = verify_manifest(path, langs, [canonical_split(split)] if split else None)
    per_split: dict[str, dict[str, _LangAccumulator]] = {}
    formats = set()
    for source in discover(path, split, fmt):
        if wanted is not None and source.lang is not None and source.lang not in wanted:
            continue
        formats.add(source.format)
        sentences = [s for s in read_source(source, opts, report) if wanted is None or s.lang in wanted]
        by_lang: dict[str, list[int]] = {}
        for i, s in enumerate(sentences):
            by_lang.setdefault(s.lang, []).append(i)
        accs = per_split.setdefault(source.split, {})
        features = None
        if aligner is not None:
            content = None
            if Path(source.path).is_file():
                content = f"{file_digest(source.path)}|{source.format}|{source.lang}|{sorted(wanted or [])}"
            features = align_cached(sentences, aligner, content, cache_dir)
            windows_per_sentence = np.bincount(features.window_sentence, minlength=len(sentences))
            slots = features.word_index >= 0
            token_sentence = np.repeat(features.window_sentence, features.window_lengths())
            aligned_per_sentence = np.bincount(token_sentence[slots], minlength=len(sentences))
        for lang, idx in by_lang.items():
            acc = accs.setdefault(lang, _LangAccumulator())
            acc.add_sentences([sentences[i] for i in idx])
            if features is not None:
                ix = np.asarray(idx)
                acc.aligned_words += int(aligned_per_sentence[ix].sum())
                acc.unk_words += int(features.unk_words[ix].sum())
                acc.truncated_words += int(features.truncated_words[ix].sum())
                acc.windows += int(windows_per_sentence[ix].sum())
                acc.subword_lengths.append(np.asarray(features.sentence_subwords[ix]))

    aligned = aligner is not None
    totals: dict[str, _LangAccumulator] = {}
    for accs in per_split.values():
        for lang, acc in accs.items():
            totals.setdefault(lang, _LangAccumulator()).merge(acc)
    result = {
        "path": str(path),
        "formats": sorted(formats),
        "splits": {s: {"languages": {lang: acc.to_json(aligned) for lang, acc in sorted(accs.items())}}
                   for s, accs in per_split.items()},
        "languages": {lang: acc.to_json(aligned) for lang, acc in sorted(totals.items())},
        "skipped_lines": len(report.skipped),
        "skipped": report.skipped,
        "converted": report.converted,
        "repairs": sum(acc.repairs for acc in totals.values()),
    }
    if check is not None:
        result["manifest"] = check.to_json()
    if aligned:
        result["tokenizer"] = str(aligner.tokenizer.name_or_path)
        result["max_seq_length"] = aligner.max_seq_length
    return result


def format_table(result: dict) -> str:
    aligned = "max_seq_length" in result
    head = ["split", "lang", "sentences", "words", "entities"]
    if aligned:
        head += ["aligned", "unk", "windows", "p95 sub-words", "max"]
    rows = [head]
    for split, block in result["splits"].items():
        for lang, st in block["languages"].items():
            row = [split, lang, st["sentences"], st["words"], st.get("entities", "-")]
            if aligned:
                row += [st["aligned_words"], st["unk_words"], st["windows"], st["subword_length"]["p95"],
                        st["subword_length"]["max"]]
            rows.append([str(c) for c in row])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if result["skipped_lines"]:
        lines.append(f"skipped {result['skipped_lines']} malformed line(s):")
        lines += [f"  {s}" for s in result["skipped"]]
    lines += [f"converted {c}" for c in result["converted"]]
    if manifest := result.get("manifest"):
        lines.append(f"{MANIFEST}: {manifest['verified_files']} file(s) match (sha256, sentences, tokens)"
                     + (f"; not listed in it: {' '.join(manifest['unlisted'])}" if manifest["unlisted"] else ""))
    if result["repairs"]:
        per_lang = ", ".join(f"{lang} {st['repairs']}" for lang, st in result["languages"].items() if st.get("repairs"))
        lines.append(f"repaired {result['repairs']} entities that open with I-X after O or another type ({per_lang}): "
                     "counted as entities, as seqeval's default mode scores them (strict IOB2 mode drops them)")
    return "\n".join(lines)
