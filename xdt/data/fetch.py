"""`xdt data fetch wikiann`: the HF `wikiann` configurations -> an XTREME-layout folder plus `manifest.json`.

Run on a login node with internet (the hub) or anywhere from a local `save_to_disk` copy (`SRC/<lang>/`); compute
nodes then read the folder offline, as `xdt eval --data DIR` and `data.path: DIR` read any `{split}-{lang}.tsv`
folder. Labels travel by their ClassLabel names. Every file is written into a staging folder beside `--out`,
read back with xdt's own reader and compared with the dataset's rows before anything is moved into `--out`.
Files already in `--out` are never lost: the same content is left alone (a re-fetch is a no-op), other content
is refused unless `overwrite`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from xdt import __version__
from xdt.data.cache import file_digest
from xdt.data.manifest import FileRecord, LanguageRecord, Manifest, read_manifest, write_manifest
from xdt.data.readers import ReadOptions, read_conll
from xdt.data.sentence import WIKIANN_LABELS, Sentence
from xdt.errors import DataError, XdtError
from xdt.outputs import overlap

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "unimelb-nlp/wikiann"  # parquet on the hub (no loading script); one config per language
# xdt split -> HF split of the wikiann configurations
SPLITS = {"train": "train", "dev": "validation", "test": "test"}
# The 176 configurations of HF wikiann (Rahimi et al. 2019 balanced splits), as its dataset_infos.json names them.
_WIKIANN_CODES = """
ace af als am an ang ar arc arz as ast ay az ba bar bat-smg be be-x-old bg bh bn bo br bs ca cbk-zam cdo ce ceb ckb
co crh cs csb cv cy da de diq dv el eml en eo es et eu ext fa fi fiu-vro fo fr frr fur fy ga gan gd gl gn gu hak he
hi hr hsb hu hy ia id ig ilo io is it ja jbo jv ka kk km kn ko ksh ku ky la lb li lij lmo ln lt lv map-bms mg mhr mi
min mk ml mn mr ms mt mwl my mzn nap nds ne nl nn no nov oc or os pa pdc pl pms pnb ps pt qu rm ro ru rw sa sah scn
sco sd sh si simple sk sl so sq sr su sv sw szl ta te tg th tk tl tr tt ug uk ur uz vec vep vi vls vo wa war wuu xmf
yi yo zea zh zh-classical zh-min-nan zh-yue
"""
WIKIANN_LANGUAGES = frozenset(_WIKIANN_CODES.split())
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class FetchRequest:
    langs: tuple[str, ...]
    out: Path
    source: str = DEFAULT_SOURCE  # hub dataset id, or a folder of save_to_disk copies SRC/<lang>/
    revision: str | None = None  # hub only: branch, tag or commit
    overwrite: bool = False  # replace files of --out whose content differs
    allow_missing: bool = False  # skip languages the source lacks (listed in the result) instead of failing


@dataclass
class FetchResult:
    out: Path
    written: dict[str, str] = field(default_factory=dict)  # lang -> new / unchanged / replaced
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # lang -> split -> sentences
    missing: list[str] = field(default_factory=list)

    def summary(self) -> list[str]:
        lines = [f"{lang}: " + ", ".join(f"{s} {n}" for s, n in self.counts[lang].items()) + f" sentences "
                 f"({how})" for lang, how in self.written.items()]
        if self.missing:
            lines.append(f"missing from the source (skipped, --allow-missing): {' '.join(self.missing)}")
        changed = sum(how != "unchanged" for how in self.written.values())
        lines.append(f"{self.out}: {len(self.written)} language(s), {changed} written, manifest "
                     f"{self.out / 'manifest.json'}")
        return lines


@dataclass(frozen=True)
class _Source:
    kind: str  # hub or disk
    where: str  # dataset id or folder
    revision: str | None = None  # hub: the commit every language is loaded from

    def describe(self, lang: str) -> dict:
        if self.kind == "hub":
            return {"kind": "hub", "dataset": self.where, "config": lang, "revision": self.revision}
        return {"kind": "disk", "path": str(Path(self.where) / lang)}


def check_languages(langs: list[str]) -> None:
    unknown = [code for code in langs if code not in WIKIANN_LANGUAGES]
    if unknown:
        raise XdtError(f"unknown WikiAnn language(s) {', '.join(unknown)}; expected codes of the HF wikiann "
                       f"configurations: {' '.join(sorted(WIKIANN_LANGUAGES))}")
    if dupes := sorted({c for c in langs if langs.count(c) > 1}):
        raise XdtError(f"language(s) given twice: {', '.join(dupes)}")


def _resolve_source(request: FetchRequest) -> tuple[_Source, list[str]]:
    """The source, and the languages of the request it lacks (a local copy only; the hub has them all)."""
    text = request.source.removeprefix("hf:")
    path = Path(request.source)
    if path.exists() or not _HUB_ID.match(text):
        if not path.is_dir():
            raise XdtError(f"--source {request.source}: not found or not a folder; expected a folder of "
                           "DatasetDict.save_to_disk copies (SRC/<lang>/) or a hub dataset id such as "
                           f"{DEFAULT_SOURCE}")
        if request.revision:
            raise XdtError(f"--revision {request.revision}: belongs to a hub source, --source {path} is a folder")
        if hit := overlap(request.out, [path]):
            raise XdtError(f"--out {request.out}: {hit[0]} the source {hit[1]}; choose an --out outside it")
        missing = [lang for lang in request.langs if not (path / lang).is_dir()]
        return _Source("disk", str(path)), missing
    try:  # pin one commit, so that every language of this fetch comes from the same revision of the dataset
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(text, revision=request.revision).sha
    except Exception as err:  # hub errors come in many types (offline, DNS, HTTP, not found); name the cause
        raise DataError(text, f"cannot read the HF hub dataset's info (revision {request.revision or 'main'}): "
                        f"{type(err).__name__}: {err}. Without internet, pass --source DIR holding "
                        "save_to_disk copies (DIR/<lang>/)") from err
    return _Source("hub", text, sha), []


def _load(source: _Source, lang: str):
    import datasets

    if source.kind == "disk":
        folder = Path(source.where) / lang
        if not (folder / "dataset_dict.json").is_file():
            raise DataError(folder, "not a DatasetDict.save_to_disk folder (no dataset_dict.json); expected "
                            "train, validation and test splits of the wikiann configuration")
        return datasets.load_from_disk(str(folder)), str(folder)
    try:
        return datasets.load_dataset(source.where, lang, revision=source.revision), f"{source.where}/{lang}"
    except Exception as err:  # as in _resolve_source: the hub's failures have no common type
        raise DataError(f"{source.where}/{lang}", f"cannot load config {lang!r} at revision {source.revision}: "
                        f"{type(err).__name__}: {err}") from err


def _label_names(dataset, where: str) -> tuple[str, ...]:
    """The ClassLabel names of `ner_tags`: integer tags are never mapped by a guessed order."""
    import datasets

    inner = getattr(dataset.features.get("ner_tags"), "feature", None)
    if not isinstance(inner, datasets.ClassLabel):
        raise DataError(where, f"ner_tags is {dataset.features.get('ner_tags')}, expected a sequence of ClassLabel "
                        "(the HF wikiann features): without label names the integer tags cannot be read")
    if unknown := [n for n in inner.names if n not in WIKIANN_LABELS]:
        raise DataError(where, f"ner_tags names {', '.join(unknown)}; expected WikiAnn's {' '.join(WIKIANN_LABELS)}")
    return tuple(inner.names)


def _sentences(dataset, lang: str, where: str) -> list[Sentence]:
    names = _label_names(dataset, where)
    out = []
    for index, row in enumerate(dataset.select_columns(["tokens", "ner_tags"])):
        words = tuple(row["tokens"])
        if not words:
            raise DataError(where, f"row {index} has no tokens; the token<TAB>tag layout cannot hold an empty "
                            "sentence")
        for word in words:
            if not word or any(c in word for c in "\t\r\n"):
                raise DataError(where, f"row {index}: token {word!r} is empty or holds a tab or line break; the "
                                "token<TAB>tag layout cannot hold it")
        out.append(Sentence(lang, words, tuple(names[t] for t in row["ner_tags"])))
    return out


def _write_split(path: Path, sentences: list[Sentence], lang: str, where: str) -> FileRecord:
    """`token<TAB>tag` lines, a blank line between sentences (as XTREME's files), then read back with xdt's reader:
    a file that would not read as exactly these sentences is refused here, not on the compute node."""
    text = "\n".join("".join(f"{w}\t{t}\n" for w, t in zip(s.words, s.tags)) for s in sentences)
    path.write_text(text, encoding="utf-8", newline="")
    back = list(read_conll(path, ReadOptions(), lang, prefixed=False))
    if back != sentences:
        first = next((i for i, (a, b) in enumerate(zip(back, sentences)) if a != b), min(len(back), len(sentences)))
        raise DataError(where, f"sentence {first} does not read back from {path.name} as written ({len(back)} of "
                        f"{len(sentences)} sentences read)")
    return FileRecord(path.name, len(sentences), sum(len(s.words) for s in sentences), path.stat().st_size,
                      file_digest(path))


def _fetch_language(source: _Source, lang: str, staging: Path, now: str) -> LanguageRecord:
    loaded, where = _load(source, lang)
    if lacking := [hf for hf in SPLITS.values() if hf not in loaded]:
        raise DataError(where, f"has no split {', '.join(lacking)}; splits: {', '.join(loaded)} (expected train, "
                        "validation, test)")
    record = LanguageRecord(source.describe(lang), now, __version__)
    record.source["fingerprints"] = {}
    for split, hf_split in SPLITS.items():
        dataset = loaded[hf_split]
        record.source["fingerprints"][split] = getattr(dataset, "_fingerprint", None)
        split_where = f"{where} [{hf_split}]"
        sentences = _sentences(dataset, lang, split_where)
        record.splits[split] = _write_split(staging / f"{split}-{lang}.tsv", sentences, lang, split_where)
    return record


def _plan(records: dict[str, LanguageRecord], out: Path) -> dict[str, str]:
    """file name -> new / unchanged / differs, comparing each staged file (by its record's sha256) with the one of
    that name in `out`."""
    staged = {r.file: r.sha256 for record in records.values() for r in record.splits.values()}
    plan = {}
    for name, sha in sorted(staged.items()):
        there = out / name
        if not there.exists():
            plan[name] = "new"
        elif there.is_file() and file_digest(there) == sha:
            plan[name] = "unchanged"
        else:
            plan[name] = "differs"
    return plan


def fetch_wikiann(request: FetchRequest) -> FetchResult:
    """Check everything that can be checked before any download, stage, compare with `out`, then move into place."""
    check_languages(list(request.langs))
    out = Path(request.out)
    if out.exists() and not out.is_dir():
        raise XdtError(f"--out {out}: exists and is not a folder; choose another --out")
    previous = read_manifest(out) if out.is_dir() else None  # a broken manifest is refused before any download
    source, missing = _resolve_source(request)
    if missing and not request.allow_missing:
        raise XdtError(f"--source {source.where} lacks {len(missing)} of the {len(request.langs)} languages: "
                       f"{' '.join(missing)} (expected {source.where}/<lang>/ from DatasetDict.save_to_disk); fetch "
                       "them into the source first, or pass --allow-missing to fetch the others")
    langs = [lang for lang in request.langs if lang not in missing]
    if not langs:
        raise XdtError(f"--source {source.where} holds none of the languages asked for ({' '.join(missing)})")

    # Staged in a hidden folder inside an existing --out (its parent may not be writable; a link may lead to
    # another file system), else beside it: moving into place is then a rename.
    real = out.resolve()
    created = [p for p in real.parents if not p.exists()]
    real.parent.mkdir(parents=True, exist_ok=True)
    home = real if real.is_dir() else real.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{real.name}.", suffix=".partial", dir=home))
    try:
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        records = {}
        for lang in langs:
            log.info("fetching %s from %s", lang, source.where)
            records[lang] = _fetch_language(source, lang, staging, now)
        plan = _plan(records, real) if real.is_dir() else {f.name: "new" for f in staging.iterdir()}
        differing = [name for name, how in plan.items() if how == "differs"]
        if differing and not request.overwrite:
            raise XdtError(f"--out {out}: {', '.join(differing)} already exist with other content than this fetch; "
                           "nothing was written: choose another --out or pass --overwrite to replace them")
        result = _install(staging, real, plan, records, previous, now)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in created:  # deepest first: only the folders this command made
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    result.out, result.missing = out, missing
    return result


def _install(staging: Path, out: Path, plan: dict[str, str], records: dict[str, LanguageRecord],
             previous: Manifest | None, now: str) -> FetchResult:
    """Move the new and (with overwrite) differing files into `out`, then the merged manifest. A language whose
    files were all unchanged keeps its old record, so a repeated fetch rewrites nothing."""
    manifest = previous or Manifest("wikiann", "xtreme", __version__, now)
    result = FetchResult(out)
    changed = False
    for lang, record in records.items():
        hows = {plan[r.file] for r in record.splits.values()}
        old = manifest.languages.get(lang)
        if hows == {"unchanged"} and old is not None and old.splits == record.splits:
            how = "unchanged"  # keep the old record: its date and source say where the files first came from
        else:
            how = ("replaced" if "differs" in hows else "new" if "new" in hows
                   else "unchanged, recorded in the manifest")
            manifest.languages[lang] = record
            changed = True
        result.written[lang] = how
        result.counts[lang] = {split: r.sentences for split, r in record.splits.items()}
    if not changed:
        shutil.rmtree(staging)
        return result
    manifest.updated, manifest.xdt_version = now, __version__
    if not out.exists():  # a folder that exists, even empty, is kept (its owner, group and mode; a shell's cwd)
        umask = os.umask(0)
        os.umask(umask)
        write_manifest(staging, manifest)
        staging.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the result gets the usual permissions
        staging.rename(out)
        return result
    for name, how in plan.items():
        if how != "unchanged":
            os.replace(staging / name, out / name)
    write_manifest(out, manifest)  # last: an interrupted move leaves files a re-run finds unchanged and records
    shutil.rmtree(staging)
    return result
