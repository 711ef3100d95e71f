"""argparse wiring of `xdt eval` and `xdt eval merge`. `xdt/cli.py` calls `add_eval_parser(sub)`.

Each `func` returns an int exit code: 0 success; bad input raises XdtError (exit 2 in xdt.cli.main).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from xdt.errors import XdtError
from xdt.eval.options import EvalOptions
from xdt.options import add_options, options_from


def _run_eval(args: argparse.Namespace) -> int:
    from xdt.data.cache import default_cache_dir
    from xdt.eval.report import summary_lines
    from xdt.eval.run import evaluate

    missing = [flag for flag, value in (("--model", args.model), ("--data", args.data), ("--out", args.out))
               if not value]
    if missing:
        raise XdtError(f"xdt eval: {', '.join(missing)} required (or `xdt eval merge OUT... --out DIR`)")
    cache_dir = None if args.no_cache else str(Path(args.cache_dir) if args.cache_dir else default_cache_dir())
    report = evaluate(options_from(EvalOptions, args, cache_dir=cache_dir))
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
    add_options(ev, EvalOptions)
    ev.add_argument("--no-cache", action="store_true", help="align without reading or writing the cache")
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
