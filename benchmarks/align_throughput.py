"""Words/second of xdt's windowed aligner against the standard HF recipe, on every test split in ../shared/data.

The HF recipe is the token-classification example's: `datasets.map(batched=True)` over the tokenizer with
`truncation=True`, the label on the first sub-word of each word. It drops the words past `max_seq_length` and those
that tokenize to nothing; xdt keeps every word. Both start from the same in-memory sentences (reading the files is
not timed) and use the same fast tokenizer. Each round times both, in an order that alternates from round to round;
the speed ratio is the median of the per-round ratios (the two runs of a round share the machine's load), the
words/s figures the median of each side. Prints the machine load at start and end, one JSON object, then one
summary line.

    python benchmarks/align_throughput.py [--max-seq-length 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from bench_common import LoadWatch, median_ratio, rotated  # noqa: E402  (benchmarks/, the script's own folder)


def hf_recipe(tokenizer, tokens, tags, max_len):
    import datasets

    ds = datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags})

    def tokenize_and_align(batch):
        enc = tokenizer(batch["tokens"], truncation=True, max_length=max_len, is_split_into_words=True)
        labels = []
        for i, word_tags in enumerate(batch["ner_tags"]):
            previous, row = None, []
            for w in enc.word_ids(i):
                row.append(-100 if w is None or w == previous else word_tags[w])
                previous = w
            labels.append(row)
        enc["labels"] = labels
        return enc

    datasets.disable_progress_bars()
    start = time.perf_counter()
    out = ds.map(tokenize_and_align, batched=True, keep_in_memory=True, load_from_cache_file=False)
    elapsed = time.perf_counter() - start
    kept = sum(sum(1 for label in row if label != -100) for row in out["labels"])
    return elapsed, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5, help="paired rounds (the median ratio counts)")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    watch = LoadWatch("align_throughput")

    from xdt.data.align import Aligner
    from xdt.data.discover import read_split
    from xdt.data.sentence import WIKIANN_LABELS
    from xdt.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.data / "vocab" / "bert-base-multilingual-cased")
    sentences = []
    for layout in ("xtreme", "raw"):
        for by_lang in read_split(args.data / "wikiann" / layout, "test").values():
            for lang_sentences in by_lang.values():
                sentences += lang_sentences
    words = sum(len(s.words) for s in sentences)
    label2id = {t: i for i, t in enumerate(WIKIANN_LABELS)}
    tokens = [list(s.words) for s in sentences]
    tags = [[label2id[t] for t in s.tags] for s in sentences]

    aligner = Aligner(tokenizer, args.max_seq_length, label2id)
    xdt_times, hf_times = [], []
    for r in range(args.repeat):
        for side in rotated(("xdt", "hf"), r):
            if side == "xdt":
                start = time.perf_counter()
                features = aligner.align(sentences)
                xdt_times.append(time.perf_counter() - start)
            else:
                elapsed, hf_kept = hf_recipe(tokenizer, tokens, tags, args.max_seq_length)
                hf_times.append(elapsed)
    xdt_kept = features.aligned_words()
    xdt_wps = words / statistics.median(xdt_times)
    hf_wps = words / statistics.median(hf_times)
    ratio = median_ratio(hf_times, xdt_times)  # xdt speed over HF speed, per round
    result = {
        "benchmark": "align_throughput",
        "max_seq_length": args.max_seq_length,
        "sentences": len(sentences),
        "words": words,
        "rounds": args.repeat, "statistic": "ratio: median of per-round ratios, order alternating; words/s: median",
        "xdt": {"seconds": [round(t, 3) for t in xdt_times], "words_per_second": round(xdt_wps), "words_kept": xdt_kept,
                "words_lost": words - xdt_kept, "windows": features.num_windows},
        "hf_recipe": {"seconds": [round(t, 3) for t in hf_times], "words_per_second": round(hf_wps),
                      "words_kept": hf_kept, "words_lost": words - hf_kept},
        "speed_ratio_xdt_over_hf": round(ratio, 3),
        "target": "xdt >= 0.8x the HF recipe while losing no word",
        "pass": ratio >= 0.8 and xdt_kept == words,
    }
    result["machine_load"] = watch.finish()
    print(json.dumps(result))
    print(f"align_throughput: xdt {xdt_wps:,.0f} words/s (lost 0 of {words:,}) vs HF recipe {hf_wps:,.0f} words/s "
          f"(lost {words - hf_kept:,}) at max_seq_length {args.max_seq_length}: {ratio:.2f}x (median of "
          f"{args.repeat} paired rounds) [{'PASS' if result['pass'] else 'FAIL'}: target >= 0.8x, no word lost]; "
          f"{watch.summary()}")


if __name__ == "__main__":
    main()
