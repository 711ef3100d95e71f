"""`xdt transfer build CONFIG --out DIR [key=value ...]` and `xdt transfer stats PATH [--json]`.

Wire into xdt/cli.py with `add_transfer_parser(sub)` (and drop `transfer` from RESERVED); the `func` of each
subcommand returns the exit code, XdtError becomes exit code 2 there.
"""

from __future__ import annotations

import argparse
import json
import sys


class _OutThenOverrides(argparse.Action):
    """`--out PATH [KEY=VALUE ...]`: argparse ends a command's positionals at the first option, so overrides that
    follow `--out PATH` (the documented order) arrive here and are kept apart from PATH."""

    def __call__(self, parser, namespace, values, option_string=None):
        path, *rest = values
        for value in rest:
            if "=" not in value:
                parser.error(f"{option_string}: unexpected {value!r} after the output folder; overrides look like "
                             "dotted.key=value")
        namespace.out = path
        namespace.late_overrides = list(rest)


def _build(args: argparse.Namespace) -> int:
    from xdt.transfer.build import build_transfer
    from xdt.transfer.config import load_transfer_config

    cfg = load_transfer_config(args.config, list(args.overrides) + list(getattr(args, "late_overrides", [])))
    result = build_transfer(cfg, args.out, progress=not args.quiet and sys.stderr.isatty(), overwrite=args.overwrite)
    m = result.manifest
    counts = m["counts"]
    summary = {"out": str(result.out), "lines": counts["lines"], "sampled": m["sampling"]["sampled"],
               "languages": len(counts["by_lang"]), "by_augmentation": counts["by_augmentation"],
               "duplicates": m["filters"]["duplicates"], "shortfall": m["sampling"]["shortfall"],
               "labeled_lines": (m["files"]["labeled"] or {}).get("lines", 0)}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        augs = ", ".join(f"{k} {v}" for k, v in summary["by_augmentation"].items())
        print(f"{result.transfer}: {summary['lines']} lines ({augs}) in {summary['languages']} languages; "
              f"{summary['duplicates']} duplicates removed; labeled augmented: {summary['labeled_lines']}"
              + (f"; {summary['shortfall']} short of sampling.size" if summary["shortfall"] else ""))
    if summary["shortfall"]:
        print(f"warning: the sources hold {summary['sampled']} sentences for sampling.size "
              f"{m['sampling']['size']} (set sampling.upsample: true to repeat sentences)", file=sys.stderr)
    for lang, why in m["augmentation"]["skipped_langs"].items():
        print(f"warning: code-switching skipped {lang}: {why}", file=sys.stderr)
    return 0


def _stats(args: argparse.Namespace) -> int:
    from xdt.transfer.stats import format_stats, transfer_stats

    stats = transfer_stats(args.path)
    print(json.dumps(stats, ensure_ascii=False) if args.json else format_stats(stats))
    return 0


def add_transfer_parser(subparsers) -> None:
    transfer = subparsers.add_parser("transfer", help="build transfer sets with cross-lingual augmentation")
    sub = transfer.add_subparsers(dest="transfer_command", metavar="ACTION", required=True)

    build = sub.add_parser(
        "build", help="sample, de-duplicate and augment sources into a transfer set",
        description="Two streaming passes over unlabeled text and label-stripped WikiAnn files: length filters, "
                    "exact/normalized de-duplication, language sampling p_l ~ n_l^alpha, code-switching with MUSE "
                    "dictionaries and word noise; writes DIR/transfer.jsonl, DIR/labeled.jsonl (augmented labeled "
                    "sentences) and DIR/manifest.json.")
    build.add_argument("config", help="transfer config YAML (see configs/transfer/)")
    build.add_argument("--out", required=True, nargs="+", action=_OutThenOverrides, metavar=("DIR", "KEY=VALUE"),
                       help="output folder (transfer.jsonl, labeled.jsonl, manifest.json); may be followed by "
                            "overrides")
    build.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. sampling.size=100000 augment.codeswitch.rate=0.5 seed=1")
    build.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --out (never one that is, holds or lies inside a source)")
    build.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    build.set_defaults(func=_build)

    stats = sub.add_parser("stats", help="counts per language and augmentation, lengths, code-switched words")
    stats.add_argument("path", help="a transfer set folder or its .jsonl file")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(func=_stats)
