"""Bilingual dictionaries in MUSE format, and cross-lingual lookup through English.

A MUSE file `en-{lang}.txt` holds `english_word<SPACE>foreign_word` per line (a tab also separates); an English word
with several translations has several lines. Lookup is by the lower-cased word core (punctuation stripped by the
caller).

Direction: the MUSE files go English -> X only. A word of an English sentence is translated by en-Y directly. A word
of a sentence in language X pivots through English: the English words whose en-X entry lists it (the inverted en-X
dictionary), then their en-Y translations; the candidates are the union over those English words, in file order.
Switching into English uses the inverted en-X dictionary alone. A sentence language without its en-X file cannot be
switched (skipped and reported by the builder, or an error, as `augment.codeswitch.missing_dictionary` says).

Memory: Python dicts both ways, measured peak RSS: MUSE en-de (102k lines) about 50 MB, all 40 MUSE files (2.5M lines)
about 900 MB and ~15 s to load. Only the dictionaries of the target languages and of the sentence languages are
loaded, so naming `augment.codeswitch.targets` (rather than null: every language) is the way to keep it small.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from xdt.errors import DataError, XdtError

PIVOT = "en"


@dataclass
class MuseDictionary:
    """en -> `lang` (forward) and `lang` -> en (inverse); values are tuples in file order, without repeats."""

    lang: str
    path: str
    sha256: str
    forward: dict[str, tuple[str, ...]]
    inverse: dict[str, tuple[str, ...]]
    lines: int

    @classmethod
    def load(cls, lang: str, path: str | Path) -> MuseDictionary:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "dictionary file not found")
        data = path.read_bytes()
        if not data.strip():
            raise DataError(path, "dictionary file is empty")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(path, f"invalid UTF-8 (byte 0x{data[err.start]:02x})",
                            data.count(b"\n", 0, err.start) + 1) from None
        forward: dict[str, list[str]] = {}
        inverse: dict[str, list[str]] = {}
        lines = 0
        for lineno, line in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
            fields = line.split()
            if len(fields) != 2:
                if not fields:
                    continue
                raise DataError(path, f"{len(fields)} column(s) in {line.strip()!r}; expected `english_word "
                                "foreign_word` (MUSE format: two columns separated by a space or a tab)", lineno)
            src, dst = fields[0].lower(), fields[1]
            lines += 1
            targets = forward.get(src)
            if targets is None:
                forward[src] = [dst]
            elif dst not in targets:
                targets.append(dst)
            low = dst.lower()
            sources = inverse.get(low)
            if sources is None:
                inverse[low] = [src]
            elif src not in sources:
                sources.append(src)
        return cls(lang, str(path), hashlib.sha256(data).hexdigest(), {k: tuple(v) for k, v in forward.items()},
                   {k: tuple(v) for k, v in inverse.items()}, lines)


@dataclass
class Dictionaries:
    """The en-X dictionaries of several languages; `translations(word, src, dst)` pivots through English."""

    by_lang: dict[str, MuseDictionary] = field(default_factory=dict)

    def has(self, lang: str) -> bool:
        return lang == PIVOT or lang in self.by_lang

    def translations(self, core: str, src: str, dst: str) -> tuple[str, ...]:
        """Translations of word `core` (any case) from language `src` into `dst`; () when there is none."""
        word = core.lower()
        if src == dst:
            return ()
        if src == PIVOT:
            return self.by_lang[dst].forward.get(word, ())
        english = self.by_lang[src].inverse.get(word, ())
        if dst == PIVOT:
            return english
        forward = self.by_lang[dst].forward
        out: list[str] = []
        for e in english:
            for t in forward.get(e, ()):
                if t not in out:
                    out.append(t)
        return tuple(out)

    def manifest(self) -> dict:
        return {lang: {"path": d.path, "sha256": d.sha256, "entries": d.lines}
                for lang, d in sorted(self.by_lang.items())}


def dictionary_file(lang: str, folder: str | Path | None, files: dict[str, str]) -> Path | None:
    """The en-{lang} file: `files[lang]`, else `{folder}/en-{lang}.txt`; None when there is none."""
    if lang in files:
        return Path(files[lang])
    if folder is not None:
        path = Path(folder) / f"en-{lang}.txt"
        if path.is_file():
            return path
    return None


def available_languages(folder: str | Path | None, files: dict[str, str]) -> list[str]:
    """Every language with an en-X file (the folder's `en-*.txt` and the explicit files), plus English."""
    langs = set(files)
    if folder is not None:
        folder = Path(folder)
        if not folder.is_dir():
            raise XdtError(f"{folder}: dictionary folder not found (expected MUSE files en-{{lang}}.txt)")
        langs |= {p.name[3:-4] for p in folder.glob("en-*.txt")}
    if not langs:
        raise XdtError(f"{folder}: no MUSE dictionaries (files named en-{{lang}}.txt)")
    return sorted(langs | {PIVOT})


def load_dictionaries(langs: list[str], folder: str | Path | None, files: dict[str, str]) -> Dictionaries:
    """Load en-X for every X in `langs` (English needs none); a language without a file is an XdtError."""
    out = Dictionaries()
    for lang in sorted(set(langs) - {PIVOT}):
        path = dictionary_file(lang, folder, files)
        if path is None:
            raise XdtError(f"no dictionary for language {lang!r}: expected {Path(folder or '.') / f'en-{lang}.txt'} "
                           "(MUSE format) or resources.dictionary_files." + lang)
        out.by_lang[lang] = MuseDictionary.load(lang, path)
    return out
