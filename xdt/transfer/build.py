"""`xdt transfer build`: sources -> filters -> de-dup -> language sampling -> augmentation -> JSONL + manifest.

Two streaming passes over the sources: (1) count what passes the filters, de-dup hashes to disk partitions, a
`replace` reservoir per language; (2) select (Algorithm S, each group's exact quota), augment in chunks of 256 and
write through the on-disk shuffle. Memory does not grow with the transfer set. Output folder:

    transfer.jsonl   {"lang", "words", "source", "augmentation", "changed"} per line
    labeled.jsonl    augmented sentences of labeled sources, plus "tags" (only when there are some)
    manifest.json    sources with content hashes, counts per language and augmentation, seed, full config

Memory and disk accounting: docs/internals.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from xdt import __version__
from xdt.config import to_dict
from xdt.data.readers import ReadReport
from xdt.errors import SYMLINK_LOOP, DataError, XdtError, is_symlink_loop
from xdt.outputs import check_out, staged_folder
from xdt.transfer.codeswitch import Change, CodeSwitcher, Item
from xdt.transfer.config import SourceConfig, TransferConfig, resolve_path, source_name
from xdt.transfer.dedup import Deduplicator, is_set
from xdt.transfer.dictionary import PIVOT, available_languages, dictionary_file, load_dictionaries
from xdt.transfer.noise import Masker, MlmReplacer, Replacer, Reservoir
from xdt.transfer.sampling import GroupSelector, allocate, smoothed_probabilities
from xdt.transfer.sources import SourceUnit, file_sha256, read_unit, source_units, unit_files
from xdt.transfer.writer import ShuffledWriter, jsonl_line

log = logging.getLogger(__name__)

TRANSFER_FILE = "transfer.jsonl"
LABELED_FILE = "labeled.jsonl"
MANIFEST_FILE = "manifest.json"
CHUNK = 256  # sampled sentences augmented together (the MLM batches within a chunk)
AUGMENTATIONS = ("codeswitch", "mask", "replace", "mlm")


def derive_seed(seed: int, purpose: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{purpose}".encode(), digest_size=8).digest(), "little")


@dataclass
class SourceScan:
    """What the first pass saw of one source."""

    name: str
    units: list[SourceUnit]
    read: int = 0
    too_short: int = 0
    too_long: int = 0
    other_lang: int = 0
    reader_skipped: list[str] = field(default_factory=list)


@dataclass
class Scan:
    sources: list[SourceScan]
    groups: list[tuple[int, str]]  # group id -> (source index, language)
    eligible: list[int]  # per group, after filters
    unique: list[int]  # per group, after de-dup
    positions: int
    drop: bytearray | None  # de-dup bitset over positions, None without de-dup
    vocabulary: dict[str, list[str]]


@dataclass
class Plan:
    weights: dict[str, float]  # language -> weighted count
    available: dict[str, int]
    probabilities: dict[str, float]
    quota: dict[str, int]
    group_quota: list[int]
    caps: dict[str, int | None]
    saturated: list[str]  # languages held below their p_l share by a cap or by what they have


@dataclass
class BuildResult:
    out: Path
    transfer: Path
    labeled: Path | None
    manifest: dict


# --------------------------------------------------------------------------------------------- pass 1


def _eligible(cfg: TransferConfig, src: SourceConfig, lang: str, n_words: int, scan: SourceScan) -> bool:
    wanted = cfg.sampling.langs
    if (wanted is not None and lang not in wanted) or (src.langs is not None and lang not in src.langs):
        scan.other_lang += 1
        return False
    if n_words < cfg.filters.min_words:
        scan.too_short += 1
        return False
    if n_words > cfg.filters.max_words:
        scan.too_long += 1
        return False
    return True


def _sentences(cfg: TransferConfig, scans: list[SourceScan], report_to: list[SourceScan] | None
               ) -> Iterator[tuple[int, object]]:
    """(source index, Sentence) for every sentence that passes the filters, in the fixed order of both passes."""
    for s, (src, scan) in enumerate(zip(cfg.sources, scans)):
        counter = scan if report_to is not None else SourceScan(scan.name, scan.units)
        for unit in scan.units:
            report = ReadReport()
            seen = 0
            for sentence in read_unit(src, unit, report):
                seen += 1
                if _eligible(cfg, src, sentence.lang, len(sentence.words), counter):
                    yield s, sentence
            if seen == 0:
                raise DataError(unit.path, "no sentences in this source file")
            counter.read += seen
            if report_to is not None:
                counter.reader_skipped += report.skipped


def first_pass(cfg: TransferConfig, scratch: Path, progress: bool) -> Scan:
    scans = [SourceScan(source_name(src), source_units(src, cfg.sampling.langs)) for src in cfg.sources]
    group_of: dict[tuple[int, str], int] = {}
    groups: list[tuple[int, str]] = []
    eligible: list[int] = []
    dedup = Deduplicator(cfg.filters.dedup, scratch / "dedup") if cfg.filters.dedup != "none" else None
    reservoir = None
    if cfg.augment.replace.rate > 0:
        reservoir = Reservoir(cfg.augment.replace.vocab_sentences, random.Random(derive_seed(cfg.seed, "vocab")))
    position = 0
    for s, sentence in _progress(_sentences(cfg, scans, scans), progress, "transfer: counting"):
        key = (s, sentence.lang)
        g = group_of.get(key)
        if g is None:
            g = group_of[key] = len(groups)
            groups.append(key)
            eligible.append(0)
        eligible[g] += 1
        if dedup is not None:
            dedup.add(sentence.lang, sentence.words, position, g)
        if reservoir is not None:
            reservoir.add(sentence.lang, sentence.words)
        position += 1
    if position == 0:
        raise XdtError("no sentence passes the filters in any source ("
                       + "; ".join(f"{sc.name}: {sc.read} read, {sc.too_short} too short, {sc.too_long} too long, "
                                   f"{sc.other_lang} of other languages" for sc in scans) + ")")
    drop, unique = None, list(eligible)
    if dedup is not None:
        drop, dropped = dedup.finish(position, len(groups))
        unique = [e - int(d) for e, d in zip(eligible, dropped)]
    vocabulary = reservoir.vocabulary() if reservoir is not None else {}
    return Scan(scans, groups, eligible, unique, position, drop, vocabulary)


# --------------------------------------------------------------------------------------------- planning


def plan_sampling(cfg: TransferConfig, scan: Scan) -> Plan:
    s = cfg.sampling
    weights: dict[str, float] = {}
    available: dict[str, int] = {}
    for (src_index, lang), n in zip(scan.groups, scan.unique):
        weights[lang] = weights.get(lang, 0.0) + cfg.sources[src_index].weight * n
        available[lang] = available.get(lang, 0) + n
    langs = sorted(weights)
    weights = {lang: weights[lang] for lang in langs}
    caps: dict[str, int | None] = {}
    for lang in langs:
        limits = [c for c in (s.caps.get(lang), s.max_per_lang) if c is not None]
        caps[lang] = min(limits) if limits else None
    saturated = []
    if s.size is None:
        probabilities = smoothed_probabilities(weights, 1.0)
        quota = {lang: available[lang] if caps[lang] is None else min(caps[lang], available[lang]) for lang in langs}
        saturated = [lang for lang in langs if quota[lang] < available[lang]]
    else:
        probabilities = smoothed_probabilities(weights, s.alpha)
        limit = {lang: caps[lang] if s.upsample else min(c for c in (caps[lang], available[lang]) if c is not None)
                 for lang in langs}
        quota = allocate(s.size, probabilities, limit)
        saturated = [lang for lang in langs if limit[lang] is not None and quota[lang] == limit[lang]
                     and probabilities[lang] * s.size > limit[lang]]
    group_quota = [0] * len(scan.groups)
    for lang in langs:
        members = [g for g, (_, l) in enumerate(scan.groups) if l == lang]
        w = {g: cfg.sources[scan.groups[g][0]].weight * scan.unique[g] for g in members}
        limit = {g: (None if s.upsample else scan.unique[g]) for g in members}
        for g, q in allocate(quota[lang], w, limit).items():
            group_quota[g] = q
    return Plan(weights, available, probabilities, quota, group_quota, caps, saturated)


# --------------------------------------------------------------------------------------------- augmenters


@dataclass
class Augmenters:
    steps: list  # (name, rate, augmenter)
    dictionaries: dict
    skipped_langs: dict[str, str]


def make_augmenters(cfg: TransferConfig, langs: list[str], vocabulary: dict[str, list[str]]) -> Augmenters:
    a, r = cfg.augment, cfg.resources
    keep = a.entities == "keep"
    steps, dictionaries, skipped = [], {}, {}
    if a.codeswitch.rate > 0:
        folder = resolve_path(r.dictionaries) if r.dictionaries else None
        files = {k: str(resolve_path(v)) for k, v in r.dictionary_files.items()}
        known = available_languages(folder, files)
        targets = a.codeswitch.targets if a.codeswitch.targets is not None else known
        for t in targets:
            if t not in known:
                raise XdtError(f"augment.codeswitch.targets: no dictionary for target language {t!r}: expected "
                               f"{Path(folder or '.') / f'en-{t}.txt'} (MUSE format) or "
                               f"resources.dictionary_files.{t}")
        sentence_langs = []
        for lang in langs:
            if lang == PIVOT or dictionary_file(lang, folder, files) is not None:
                sentence_langs.append(lang)
            else:
                skipped[lang] = f"no dictionary en-{lang}.txt in {folder}" if folder else f"no dictionary for {lang}"
        if skipped and a.codeswitch.missing_dictionary == "error":
            raise XdtError("augment.codeswitch: no dictionary for sentence language(s) "
                           + ", ".join(f"{k} ({v})" for k, v in skipped.items())
                           + "; add them or set augment.codeswitch.missing_dictionary: skip")
        for lang, why in skipped.items():
            log.warning("code-switching skips %s sentences: %s", lang, why)
        if not [t for t in targets if any(t != lang for lang in sentence_langs)]:
            raise XdtError("augment.codeswitch: no target language differs from the sentence languages "
                           f"({', '.join(langs)}); targets: {', '.join(targets)}")
        dicts = load_dictionaries(sorted(set(targets) | set(sentence_langs)), folder, files)
        dictionaries = dicts.manifest()
        steps.append(("codeswitch", a.codeswitch.rate, CodeSwitcher(a.codeswitch, dicts, targets, keep)))
    if a.mask.rate > 0:
        steps.append(("mask", a.mask.rate, Masker(a.mask, keep)))
    if a.replace.rate > 0:
        steps.append(("replace", a.replace.rate, Replacer(a.replace, vocabulary, keep)))
    if a.mlm.rate > 0:
        steps.append(("mlm", a.mlm.rate, MlmReplacer(a.mlm, resolve_path(r.mlm), keep)))
    return Augmenters(steps, dictionaries, skipped)


# --------------------------------------------------------------------------------------------- pass 2


@dataclass
class Tally:
    """Counts of what was written, for the manifest."""

    lines: int = 0
    by_lang: Counter = field(default_factory=Counter)
    by_augmentation: Counter = field(default_factory=Counter)
    by_lang_augmentation: dict[str, Counter] = field(default_factory=dict)
    changed_words: Counter = field(default_factory=Counter)

    def add(self, lang: str, augmentation: str, changed: int) -> None:
        self.lines += 1
        self.by_lang[lang] += 1
        self.by_augmentation[augmentation] += 1
        self.by_lang_augmentation.setdefault(lang, Counter())[augmentation] += 1
        self.changed_words[augmentation] += changed

    def to_json(self) -> dict:
        return {"lines": self.lines, "by_lang": dict(sorted(self.by_lang.items())),
                "by_augmentation": dict(sorted(self.by_augmentation.items())),
                "by_lang_augmentation": {k: dict(sorted(v.items()))
                                         for k, v in sorted(self.by_lang_augmentation.items())},
                "changed_words": dict(sorted(self.changed_words.items()))}


def _record(item: Item, words: tuple[str, ...], augmentation: str, changed, tags: bool) -> dict:
    record = {"lang": item.lang, "words": list(words), "source": item.source, "augmentation": augmentation,
              "changed": [list(c) for c in changed]}
    if tags:
        record["tags"] = list(item.tags)
    return record


class ChunkWriter:
    """Augments chunks of sampled sentences and writes them: the original, then its augmented copies."""

    def __init__(self, cfg: TransferConfig, augmenters: Augmenters, transfer: ShuffledWriter,
                 labeled: ShuffledWriter | None, rng: random.Random):
        self.cfg = cfg
        self.augmenters = augmenters
        self.transfer = transfer
        self.labeled = labeled
        self.rng = rng
        self.tally = Tally()
        self.labeled_tally = Tally()
        self.unchanged: Counter = Counter()  # augmentation -> copies asked for but impossible (no word to change)
        self.no_dictionary: Counter = Counter()  # language -> code-switch copies skipped for want of a dictionary

    def write_chunk(self, items: list[Item]) -> None:
        copies: list[list[tuple[str, Change]]] = [[] for _ in items]
        for name, rate, augmenter in self.augmenters.steps:
            whole, frac = int(rate), rate - int(rate)
            wanted = []
            for b, item in enumerate(items):
                n = whole + (1 if frac and self.rng.random() < frac else 0)
                if name == "codeswitch" and item.lang in self.augmenters.skipped_langs:
                    self.no_dictionary[item.lang] += n
                    continue
                wanted += [b] * n
            results = augmenter.apply_batch([items[b] for b in wanted], self.rng)
            for b, change in zip(wanted, results):
                if change is None:
                    self.unchanged[name] += 1
                else:
                    copies[b].append((name, change))
        for item, made in zip(items, copies):
            if self.cfg.augment.keep_original:
                self.transfer.write(jsonl_line(_record(item, item.words, "none", (), False)))
                self.tally.add(item.lang, "none", 0)
            for name, change in made:
                self.transfer.write(jsonl_line(_record(item, change.words, name, change.changed, False)))
                self.tally.add(item.lang, name, len(change.changed))
                if self.labeled is not None and item.tags is not None:
                    self.labeled.write(jsonl_line(_record(item, change.words, name, change.changed, True)))
                    self.labeled_tally.add(item.lang, name, len(change.changed))


def second_pass(cfg: TransferConfig, scan: Scan, plan: Plan, writer: ChunkWriter, progress: bool) -> Counter:
    rng = random.Random(derive_seed(cfg.seed, "select"))
    selectors = [GroupSelector(n, q, rng) if q else None for n, q in zip(scan.unique, plan.group_quota)]
    group_of = {key: g for g, key in enumerate(scan.groups)}
    names = [source_name(src) for src in cfg.sources]
    selected: Counter = Counter()
    chunk: list[Item] = []
    position = 0
    for s, sentence in _progress(_sentences(cfg, scan.sources, None), progress, "transfer: sampling",
                                 total=scan.positions):
        here = position
        position += 1
        if here >= scan.positions:
            raise DataError(scan.sources[s].units[0].path, "a source changed between the two passes (more "
                            "sentences now); do not edit sources during a build")
        if scan.drop is not None and is_set(scan.drop, here):
            continue
        g = group_of.get((s, sentence.lang))
        selector = selectors[g] if g is not None else None
        if selector is None:
            continue
        copies = selector.take()
        if copies:
            selected[sentence.lang] += copies
            item = Item(sentence.lang, sentence.words, sentence.tags, names[s])
            chunk += [item] * copies
            if len(chunk) >= CHUNK:
                writer.write_chunk(chunk)
                chunk = []
    if chunk:
        writer.write_chunk(chunk)
    if position != scan.positions:
        raise XdtError(f"the sources changed between the two passes ({scan.positions} sentences, now {position}); "
                       "do not edit sources during a build")
    return selected


# --------------------------------------------------------------------------------------------- the build


def _inputs(cfg: TransferConfig) -> list[str | None]:
    """What the build reads: an --out that is, holds or lies inside one of them is never replaced."""
    res = cfg.resources
    return [src.path for src in cfg.sources] + [res.dictionaries, res.mlm, *res.dictionary_files.values()]


def build_transfer(cfg: TransferConfig, out: str | Path, progress: bool = False,
                   overwrite: bool = False) -> BuildResult:
    """Build the transfer set of `cfg` into folder `out`: written in a hidden sibling, renamed into place when
    complete. A non-empty `out` is replaced only with `overwrite`."""
    out = check_out(out, overwrite, _inputs(cfg))
    with staged_folder(out, overwrite, _inputs(cfg)) as tmp:
        result = _build(cfg, tmp, progress)
    labeled = out / LABELED_FILE if result.labeled is not None else None
    return BuildResult(out, out / TRANSFER_FILE, labeled, result.manifest)


def _build(cfg: TransferConfig, out: Path, progress: bool) -> BuildResult:
    scratch_root = Path(cfg.output.tmp_dir) if cfg.output.tmp_dir else out
    scratch = scratch_root / f".xdt-transfer-{os.getpid()}"
    writers: list[ShuffledWriter] = []
    try:
        scan = first_pass(cfg, scratch, progress)
        plan = plan_sampling(cfg, scan)
        langs = [lang for lang, q in plan.quota.items() if q > 0]
        augmenters = make_augmenters(cfg, langs, scan.vocabulary)
        total = sum(plan.quota.values())
        per_sentence = int(cfg.augment.keep_original) + sum(-(-rate // 1) for _, rate, _ in augmenters.steps)
        shuffle_rng = random.Random(derive_seed(cfg.seed, "shuffle"))
        transfer = ShuffledWriter(out / TRANSFER_FILE, scratch / "transfer", int(total * per_sentence),
                                  cfg.output.bucket_lines, cfg.output.shuffle, shuffle_rng)
        writers.append(transfer)
        labeled = None
        if cfg.augment.labeled_output and augmenters.steps and any(s.kind == "labeled" for s in cfg.sources):
            labeled = ShuffledWriter(out / LABELED_FILE, scratch / "labeled",
                                     int(total * (per_sentence - int(cfg.augment.keep_original))),
                                     cfg.output.bucket_lines, cfg.output.shuffle,
                                     random.Random(derive_seed(cfg.seed, "shuffle-labeled")))
            writers.append(labeled)
        chunk_writer = ChunkWriter(cfg, augmenters, transfer, labeled,
                                   random.Random(derive_seed(cfg.seed, "augment")))
        selected = second_pass(cfg, scan, plan, chunk_writer, progress)
        writers.clear()
        transfer_sha = transfer.close()
        labeled_sha = labeled.close() if labeled is not None else None
        if chunk_writer.tally.lines == 0:
            raise XdtError("the transfer set would be empty: every sentence was sampled out "
                           "(sampling.caps 0?) or no augmentation could change any")
        labeled_path = out / LABELED_FILE if labeled is not None and chunk_writer.labeled_tally.lines else None
        if labeled_path is None:
            (out / LABELED_FILE).unlink(missing_ok=True)
        manifest = _manifest(cfg, scan, plan, augmenters, chunk_writer, selected, transfer_sha,
                             labeled_sha if labeled_path else None)
        (out / MANIFEST_FILE).write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n",
                                         encoding="utf-8")
        return BuildResult(out, out / TRANSFER_FILE, labeled_path, manifest)
    finally:
        for w in writers:
            w.abort()
        shutil.rmtree(scratch, ignore_errors=True)


def _manifest(cfg: TransferConfig, scan: Scan, plan: Plan, augmenters: Augmenters, writer: ChunkWriter,
              selected: Counter, transfer_sha: str, labeled_sha: str | None) -> dict:
    sources = []
    for s, (src, sc) in enumerate(zip(cfg.sources, scan.sources)):
        by_lang = {lang: {"eligible": scan.eligible[g], "unique": scan.unique[g], "quota": plan.group_quota[g]}
                   for g, (i, lang) in enumerate(scan.groups) if i == s}
        files = [{"path": str(f), "sha256": file_sha256(f), "bytes": f.stat().st_size}
                 for unit in sc.units for f in unit_files(unit)]
        entry = {"name": sc.name, "path": src.path, "kind": src.kind, "weight": src.weight, "files": files,
                 "sentences": sc.read, "too_short": sc.too_short, "too_long": sc.too_long,
                 "other_languages": sc.other_lang, "reader_skipped": len(sc.reader_skipped),
                 "reader_skipped_examples": sc.reader_skipped[:20], "by_lang": dict(sorted(by_lang.items()))}
        if not by_lang:
            entry["warning"] = "no sentence of this source passed the filters"
        sources.append(entry)
    size = cfg.sampling.size
    sampled = sum(selected.values())
    return {
        "xdt_version": __version__,
        "seed": cfg.seed,
        "files": {"transfer": {"path": TRANSFER_FILE, "sha256": transfer_sha, "lines": writer.tally.lines},
                  "labeled": ({"path": LABELED_FILE, "sha256": labeled_sha, "lines": writer.labeled_tally.lines}
                              if labeled_sha else None)},
        "sources": sources,
        "filters": {"positions": scan.positions, "duplicates": sum(scan.eligible) - sum(scan.unique),
                    "dedup": cfg.filters.dedup},
        "sampling": {
            "size": size, "alpha": cfg.sampling.alpha if size is not None else None,
            "upsample": cfg.sampling.upsample, "sampled": sampled,
            "shortfall": (size - sampled) if size is not None and sampled < size else 0,
            "available": plan.available, "weighted": plan.weights,
            "probabilities": {k: round(v, 8) for k, v in plan.probabilities.items()},
            "quota": plan.quota, "saturated": plan.saturated,
        },
        "augmentation": {
            "steps": {name: rate for name, rate, _ in augmenters.steps},
            "keep_original": cfg.augment.keep_original,
            "unchanged": dict(sorted(writer.unchanged.items())),
            "skipped_langs": augmenters.skipped_langs,
            "skipped_copies_no_dictionary": dict(sorted(writer.no_dictionary.items())),
            "dictionaries": augmenters.dictionaries,
        },
        "counts": writer.tally.to_json(),
        "labeled_counts": writer.labeled_tally.to_json() if labeled_sha else None,
        "config": to_dict(cfg),
    }


def _progress(iterable, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=" sent", mininterval=1.0)


def read_transfer(path: str | Path) -> Iterator[dict]:
    """The records of a transfer set (its folder or a .jsonl file), each line checked as JSON."""
    path = Path(path)
    file = path / TRANSFER_FILE if path.is_dir() else path
    if is_symlink_loop(file):
        raise DataError(file, f"{SYMLINK_LOOP}; expected a transfer set (DIR/transfer.jsonl or a .jsonl file)")
    if not file.is_file():
        raise DataError(file, "transfer set file not found (xdt transfer build writes DIR/transfer.jsonl)")
    with open(file, "rb") as f:  # bytes: a binary file is one line naming where, not a UnicodeDecodeError
        for lineno, raw in enumerate(f, 1):
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as err:
                raise DataError(file, f"not UTF-8 text (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                "expected the JSON lines of `xdt transfer build`", lineno) from None
            except json.JSONDecodeError as err:
                raise DataError(file, f"not a JSON object: {err}", lineno) from None
            if not isinstance(record, dict) or not isinstance(record.get("words"), list) or "lang" not in record:
                raise DataError(file, "expected a JSON object with lang and words", lineno)
            yield record
