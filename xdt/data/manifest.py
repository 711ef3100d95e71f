"""`manifest.json` of a data folder written by `xdt data fetch`: what each file holds and where it came from, so a
compute node can check that its offline copy is the one the login node fetched (`xdt data inspect` does).

{"manifest_version": 1, "dataset": "wikiann", "layout": "xtreme", "xdt_version", "updated",
 "languages": {lang: {"source": {...}, "fetched", "xdt_version",
                      "splits": {split: {"file", "sentences", "tokens", "bytes", "sha256"}}}}}
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from xdt.data.cache import file_digest
from xdt.data.readers import ReadOptions, read_conll
from xdt.errors import DataError

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    """One data file as written: counts as xdt's reader reads them, and its bytes' hash."""

    file: str  # name relative to the folder
    sentences: int
    tokens: int
    bytes: int
    sha256: str


@dataclass
class LanguageRecord:
    source: dict  # kind (hub / disk), dataset id or path, config, revision, per-split fingerprints
    fetched: str  # ISO date (UTC)
    xdt_version: str
    splits: dict[str, FileRecord] = field(default_factory=dict)  # train, dev, test

    def to_json(self) -> dict:
        return {"source": self.source, "fetched": self.fetched, "xdt_version": self.xdt_version,
                "splits": {s: asdict(r) for s, r in self.splits.items()}}


@dataclass
class Manifest:
    dataset: str
    layout: str
    xdt_version: str
    updated: str
    languages: dict[str, LanguageRecord] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"manifest_version": MANIFEST_VERSION, "dataset": self.dataset, "layout": self.layout,
                "xdt_version": self.xdt_version, "updated": self.updated,
                "languages": {lang: rec.to_json() for lang, rec in sorted(self.languages.items())}}


@dataclass(frozen=True)
class ManifestCheck:
    """What `verify_manifest` checked: files listed and verified, and data files the manifest does not list."""

    path: str
    verified: int
    unlisted: tuple[str, ...]

    def to_json(self) -> dict:
        return {"path": self.path, "verified_files": self.verified, "unlisted": list(self.unlisted)}


def read_manifest(folder: str | Path) -> Manifest | None:
    """The manifest of `folder`, None when it has none; a file that is not one is refused naming the problem."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("manifest_version") != MANIFEST_VERSION:
            raise ValueError(f"manifest_version {raw.get('manifest_version')!r}, expected {MANIFEST_VERSION}")
        languages = {
            lang: LanguageRecord(rec["source"], rec["fetched"], rec["xdt_version"],
                                 {split: FileRecord(**fr) for split, fr in rec["splits"].items()})
            for lang, rec in raw["languages"].items()
        }
        return Manifest(raw["dataset"], raw["layout"], raw["xdt_version"], raw["updated"], languages)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(path, f"not a manifest written by `xdt data fetch` ({type(err).__name__}: {err}); "
                        f"expected {{manifest_version: {MANIFEST_VERSION}, dataset, layout, languages: {{lang: "
                        "{splits: {split: {file, sentences, tokens, bytes, sha256}}}}}}") from None


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Written whole to a temporary name and renamed, so a reader never sees half a manifest."""
    tmp = folder / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)


def count_file(path: Path, lang: str) -> tuple[int, int]:
    """(sentences, tokens) of an XTREME-layout file as xdt reads it (any IOB tag accepted)."""
    sentences = tokens = 0
    for sentence in read_conll(path, ReadOptions(labels=None), lang, prefixed=False):
        sentences += 1
        tokens += len(sentence.words)
    return sentences, tokens


def _difference(path: Path, lang: str, record: FileRecord, sha: str) -> str:
    """What differs between a file and its record, in words (counts re-read only once the hash differs)."""
    try:
        sentences, tokens = count_file(path, lang)
    except DataError as err:  # the tampered file no longer reads at all: say so, with the reader's reason
        return f"sha256 {sha[:12]}… (manifest {record.sha256[:12]}…), and it no longer reads: {err}"
    parts = [f"{name} {now} (manifest {then})"
             for name, now, then in (("sentences", sentences, record.sentences), ("tokens", tokens, record.tokens))
             if now != then]
    parts.append(f"sha256 {sha[:12]}… (manifest {record.sha256[:12]}…)")
    if len(parts) == 1:
        parts.append("same sentence and token counts: a word or tag changed")
    return ", ".join(parts)


def verify_manifest(folder: str | Path, langs: list[str] | None = None,
                    splits: list[str] | None = None) -> ManifestCheck | None:
    """Check every file the manifest lists (of `langs` and `splits` when given): present, same size and hash,
    else one DataError naming the file and what differs. None when the folder has no manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    listed = set()
    verified = 0
    for lang, rec in sorted(manifest.languages.items()):
        for split, record in rec.splits.items():
            listed.add(record.file)
            if (langs and lang not in langs) or (splits and split not in splits):
                continue
            path = folder / record.file
            if not path.is_file():
                raise DataError(path, f"listed in {folder / MANIFEST} ({lang} {split}) but missing; fetch it "
                                "again with `xdt data fetch`")
            sha = file_digest(path)
            if sha != record.sha256:
                raise DataError(path, f"differs from {folder / MANIFEST}: {_difference(path, lang, record, sha)}")
            verified += 1
    unlisted = tuple(sorted(p.name for p in folder.glob("*.tsv") if p.name not in listed))
    return ManifestCheck(str(folder / MANIFEST), verified, unlisted)
