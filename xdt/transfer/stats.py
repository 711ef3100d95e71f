"""`xdt transfer stats PATH`: counts per language and augmentation, length percentiles, code-switched words.

Streams the file once; memory is a histogram of sentence lengths and a few counters.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from xdt.transfer.build import LABELED_FILE, read_transfer

PERCENTILES = (5, 25, 50, 75, 95, 99)


def _percentile(hist: Counter, total: int, q: float) -> int:
    """The smallest length with at least q% of the sentences at or below it (nearest rank)."""
    rank = max(1, -(-q * total // 100))
    seen = 0
    for length in sorted(hist):
        seen += hist[length]
        if seen >= rank:
            return length
    return 0


def transfer_stats(path: str | Path) -> dict:
    path = Path(path)
    sentences = 0
    words = 0
    lengths: Counter = Counter()
    by_lang: Counter = Counter()
    by_aug: Counter = Counter()
    by_lang_aug: dict[str, Counter] = {}
    switched = 0
    switched_into: Counter = Counter()
    cs_words = 0
    changed_by_aug: Counter = Counter()
    for record in read_transfer(path):
        n = len(record["words"])
        aug = record.get("augmentation", "none")
        sentences += 1
        words += n
        lengths[n] += 1
        by_lang[record["lang"]] += 1
        by_aug[aug] += 1
        by_lang_aug.setdefault(record["lang"], Counter())[aug] += 1
        changed = record.get("changed") or []
        changed_by_aug[aug] += len(changed)
        if aug == "codeswitch":
            cs_words += n
            switched += len(changed)
            switched_into.update(lang for _, lang in changed)
    result = {
        "path": str(path),
        "sentences": sentences,
        "words": words,
        "by_lang": dict(sorted(by_lang.items())),
        "by_augmentation": dict(sorted(by_aug.items())),
        "by_lang_augmentation": {k: dict(sorted(v.items())) for k, v in sorted(by_lang_aug.items())},
        "length": {"min": min(lengths) if lengths else 0, "max": max(lengths) if lengths else 0,
                   "mean": round(words / sentences, 3) if sentences else 0.0,
                   **{f"p{q}": _percentile(lengths, sentences, q) for q in PERCENTILES}},
        "codeswitch": {
            "switched_words": switched,
            "share_of_all_words": round(switched / words, 6) if words else 0.0,
            "share_in_codeswitched_sentences": round(switched / cs_words, 6) if cs_words else 0.0,
            "into": dict(sorted(switched_into.items())),
        },
        "changed_words": dict(sorted(changed_by_aug.items())),
    }
    labeled = path / LABELED_FILE if path.is_dir() else None
    if labeled is not None and labeled.is_file():
        result["labeled"] = {k: v for k, v in transfer_stats(labeled).items() if k != "labeled"}
    return result


def format_stats(stats: dict) -> str:
    lines = [f"{stats['path']}: {stats['sentences']} sentences, {stats['words']} words"]
    augs = sorted(stats["by_augmentation"])
    header = f"{'lang':<8}{'total':>10}" + "".join(f"{a:>12}" for a in augs)
    lines.append(header)
    for lang, total in stats["by_lang"].items():
        row = stats["by_lang_augmentation"][lang]
        lines.append(f"{lang:<8}{total:>10}" + "".join(f"{row.get(a, 0):>12}" for a in augs))
    length = stats["length"]
    lines.append("length (words): " + ", ".join(f"{k} {v}" for k, v in length.items()))
    cs = stats["codeswitch"]
    lines.append(f"code-switched words: {cs['switched_words']} ({cs['share_of_all_words']:.2%} of all words, "
                 f"{cs['share_in_codeswitched_sentences']:.2%} of the words of code-switched sentences)")
    if cs["into"]:
        lines.append("switched into: " + ", ".join(f"{k} {v}" for k, v in cs["into"].items()))
    if "labeled" in stats:
        lab = stats["labeled"]
        lines.append(f"labeled augmented: {lab['sentences']} sentences "
                     + ", ".join(f"{k} {v}" for k, v in lab["by_augmentation"].items()))
    return "\n".join(lines)
