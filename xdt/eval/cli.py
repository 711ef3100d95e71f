"""argparse wiring of `xdt eval` and `xdt eval merge`. `xdt/cli.py` calls `add_eval_parser(sub)`.

Each `func` returns an int exit code: 0 success; bad input raises XdtError (exit 2 in xdt.cli.main).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xdt.config import LABELED_FORMATS
from xdt.errors import XdtError


def _run_eval(args: argparse.Namespace) -> int:
    from xdt.data.cache import default_cache_dir
    from xdt.eval.report import summary_lines
    from xdt.eval.run import EvalOptions, evaluate, parse_shard
    from xdt.languages import parse_langs

    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out))
               if not value]
    if missing:
        raise XdtError(f"xdt eval: {', '.join(missing)} required (or `xdt eval merge OUT... --out DIR`)")
    cache_dir = None if args.no_cache else str(Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    opts = EvalOptions(
        model=args.model, data=args.data, out=args.out, teacher=args.teacher, compare=args.compare,
        suite=args.suite, langs=parse_langs(args.langs), split=args.split, format=args.format,
        scheme=args.scheme, tokenizer=args.tokenizer, teacher_tokenizer=args.teacher_tokenizer,
        batch_size=args.batch_size, max_seq_length=args.max_seq_length, device=args.device, dtype=args.dtype,
        precision=args.precision,
        shard=parse_shard(args.shard) if args.shard else None, allow_missing=args.allow_missing,
        max_sentences=args.max_sentences, cache_dir=cache_dir, progress=not args.no_progress,
        threads=args.threads, overwrite=args.overwrite,
    )
    report = evaluate(opts)
    for line in summary_lines(report):
        print(line)
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def _run_merge(args: argparse.Namespace) -> int:
    from xdt.eval.merge import merge_reports
    from xdt.eval.report import summary_lines

    report = merge_reports(args.reports, args.out, allow_partial=args.allow_partial, overwrite=args.overwrite)
    for line in summary_lines(report):
        print(line)
    print(f"report: {Path(args.out) / 'report.json'}")
    return 0


def add_eval_parser(subparsers) -> None:
    """Register `eval` (and its `merge` action) on the top-level subparsers of `xdt`."""
    ev = subparsers.add_parser(
        "eval", help="per-language WikiAnn F1 (seqeval) with reports and plots",
        description="Evaluate a local HF token-classification model per language (seqeval default and strict "
                    "mode), optionally beside a teacher, and write OUT/report.json, per_language.csv, report.md, "
                    "f1_per_language.png and predictions/<lang>.conll. `xdt eval merge` joins --shard runs.")
    ev.add_argument("--model", help="model folder (config.json, model.safetensors, tokenizer files), or an ONNX "
                                    "folder of `xdt export --format onnx` (run with onnxruntime on the CPU)")
    ev.add_argument("--teacher", help="teacher model folder, evaluated on the same data (teacher F1, retention)")
    ev.add_argument("--compare", metavar="REPORT.json", help="take the teacher column from an earlier report")
    ev.add_argument("--suite", help="suite name in eval/ (e.g. wikiann41) or a suite YAML file")
    ev.add_argument("--langs", help="comma-separated languages (a subset of --suite when both are given); "
                                    "default: the suite's, else every language found")
    ev.add_argument("--data", action="append", metavar="PATH",
                    help="WikiAnn folder or file in any supported layout; repeat for several folders")
    ev.add_argument("--split", help="train, dev or test (default: the suite's split, else test)")
    ev.add_argument("--format", choices=LABELED_FORMATS, help="default: detected")
    ev.add_argument("--scheme", choices=["IOB2", "IOE2", "IOBES"], help="strict-mode scheme (default: the suite's)")
    ev.add_argument("--out", help="output folder (must not exist or be empty unless --overwrite)")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace a non-empty --out (never one that is, holds or lies inside an input)")
    ev.add_argument("--tokenizer", help="tokenizer folder when the model folder has none")
    ev.add_argument("--teacher-tokenizer", help="tokenizer folder when the teacher folder has none")
    ev.add_argument("--batch-size", type=int, default=64, help="windows per batch (64)")
    ev.add_argument("--max-seq-length", type=int,
                    help="sub-words per window, specials included (default: the length the model was trained with, "
                         "recorded by xdt in its config.json as xdt_max_seq_length; else 128); longer sentences "
                         "are windowed")
    ev.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    ev.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA with bf16, fp32 on CPU), fp32, bf16, fp16")
    ev.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="a plain BERT on the CPU: fp32, or bf16 matrix products with every word they could mislabel "
                         "recomputed in fp32 (the fp32 labels, faster); auto: bf16 where the CPU has native bf16 "
                         "dot products (AVX512-BF16, AMX), else fp32")
    ev.add_argument("--threads", type=int, help="CPU threads for inference (default: torch's; on a shared node "
                                                "set it to the cores you were given)")
    ev.add_argument("--shard", metavar="I/N",
                    help="evaluate share I (0-based) of N of the languages, e.g. $SLURM_ARRAY_TASK_ID/4")
    ev.add_argument("--allow-missing", action="store_true",
                    help="evaluate the languages found and list the others as missing (default: error)")
    ev.add_argument("--max-sentences", type=int, help="first N sentences per language (quick checks)")
    ev.add_argument("--cache-dir", help="aligned-feature cache (default $XDT_CACHE or ~/.cache/xdt)")
    ev.add_argument("--no-cache", action="store_true", help="align without reading or writing the cache")
    ev.add_argument("--no-progress", action="store_true", help="no progress bars")
    ev.set_defaults(func=_run_eval)

    actions = ev.add_subparsers(dest="eval_action", metavar="ACTION", required=False)
    merge = actions.add_parser(
        "merge", help="merge the --out folders of `xdt eval --shard` runs into one report",
        description="Join shard reports (and their predictions) into the report a single run gives: "
                    "per-language entries are kept, means, std and micro F1 are recomputed from their counts.")
    merge.add_argument("reports", nargs="+", metavar="OUT", help="--out folders (or report.json files) of the shards")
    merge.add_argument("--out", required=True,
                       help="folder of the merged report (must not exist or be empty unless --overwrite)")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --out (never a shard folder, nor one holding or inside one)")
    merge.add_argument("--allow-partial", action="store_true", help="merge even when some shards are absent")
    merge.set_defaults(func=_run_merge)
