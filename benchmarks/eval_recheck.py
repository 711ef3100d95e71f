"""The bf16 re-check of `xdt eval --precision auto` on trained models: labels against fp32, its threshold against the
worst error over every word, and its speed-up over `--precision fp32`.

`eval_throughput.py` measures the re-check on a random model (near-tied logits: the hard case for its share); this
runs it on the models a user evaluates, e.g. the teachers and students `benchmarks/quality.py` trains (runs/quality).
For each `--model` folder, on the first `--max-sentences-per-lang` test sentences of `--langs` (WikiAnn, XTREME
layout): the report of `eval_throughput.recheck_report` (a fresh default model: windows and words re-checked, the
calibration and audit ratios, the threshold; the labels bf16 alone and the re-checked run get wrong against fp32; the
worst error ratio over every word), then `--rounds` paired rounds of prediction at auto and at fp32 (alignment done
once; a fresh auto model around the same weights each round, so each round pays for its calibration, as each
`xdt eval` run does).
Prints the machine load at start and end, one JSON object and a one-line summary; `--out FILE` also writes the JSON.
    .venv/bin/python benchmarks/eval_recheck.py --model runs/quality/b/teacher_run/teacher --langs de,ar,hi,fi
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_common import LoadWatch, emit_json, median_ratio, rotated  # noqa: E402
from eval_throughput import DATA, recheck_report  # noqa: E402
from xdt.data.align import Aligner  # noqa: E402
from xdt.eval.bf16_bert import Bf16RecheckBertTokenClassifier  # noqa: E402
from xdt.eval.data import load_eval_data  # noqa: E402
from xdt.eval.model import load_model  # noqa: E402
from xdt.eval.predict import predict_label_ids  # noqa: E402


def one_model(folder: str, sentences, args) -> dict:
    exact = load_model(folder, device="cpu", dtype="fp32", precision="fp32")
    tokenizer, cpu = exact.tokenizer, torch.device("cpu")
    report = recheck_report(folder, tokenizer, sentences, args.max_seq_length, args.batch_size)
    if "skipped" in report:
        return {"model": folder, **report}
    features = Aligner(tokenizer, args.max_seq_length).align(sentences)
    pad = tokenizer.pad_token_id
    # a fresh auto model per round around the loaded weights: each round calibrates, as each `xdt eval` run does
    paths = {"auto": lambda: predict_label_ids(Bf16RecheckBertTokenClassifier(exact.model.hf), features,
                                               args.batch_size, pad, cpu),
             "fp32": lambda: predict_label_ids(exact.model, features, args.batch_size, pad, cpu)}
    cpu_s = {name: [] for name in paths}
    for r in range(args.rounds):
        for name in rotated(list(paths), r):
            t0 = time.process_time()
            paths[name]()
            cpu_s[name].append(time.process_time() - t0)
    return {"model": folder, "architecture": exact.architecture, "recheck": report,
            "cpu_seconds": {k: [round(t, 3) for t in v] for k, v in cpu_s.items()},
            "auto_vs_fp32": round(median_ratio(cpu_s["fp32"], cpu_s["auto"]), 3),
            "threshold_over_worst_error": (round(report["threshold"] / report["max_error_ratio_all_words"], 2)
                                           if report["threshold"] else None)}  # None: too few windows to calibrate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", required=True, help="token-classification folder (repeatable)")
    p.add_argument("--langs", default="de,ar,hi,fi")
    p.add_argument("--max-sentences-per-lang", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="paired rounds of auto and fp32 prediction (3)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)
    watch = LoadWatch("eval_recheck")
    torch.set_num_threads(args.threads)
    data = load_eval_data([str(DATA / "wikiann" / "xtreme")], "test", args.langs.split(","),
                          max_sentences=args.max_sentences_per_lang)
    sentences = [s for d in data.languages.values() for s in d.sentences]
    result = {"benchmark": "eval_recheck", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "languages": list(data.languages), "sentences": len(sentences),
              "command": " ".join(["python benchmarks/eval_recheck.py", *(argv or sys.argv[1:])]),
              "models": [one_model(folder, sentences, args) for folder in args.model]}
    result["machine_load"] = watch.finish()
    emit_json(result, args.out)
    parts = []
    for m in result["models"]:
        if "skipped" in m:
            parts.append(f"{m['model']}: {m['skipped']}")
            continue
        rc = m["recheck"]
        margin = (f"threshold {m['threshold_over_worst_error']}x the worst error over every word"
                  if m["threshold_over_worst_error"] else "fp32 alone (too few windows to calibrate)")
        parts.append(f"{m['model']}: {rc['labels_differing_after_recheck']} of {rc['words']:,} labels differ from fp32 "
                     f"(bf16 alone {rc['labels_differing_bf16_alone']}), {rc['share_windows_rechecked']:.1%} of "
                     f"windows re-checked, {margin}, {m['auto_vs_fp32']}x fp32")
    print("SUMMARY " + "; ".join(parts) + f"; {watch.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
