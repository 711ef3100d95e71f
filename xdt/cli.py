"""The `xdt` command line: parse, build a config, call one function per subcommand.

Exit codes: 0 success, 1 an unexpected failure (a bug: the traceback is printed), 2 bad input (one line that names
the file, line or key, and what was expected).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from xdt import __version__
from xdt.config import DATA_FORMATS
from xdt.deploy.options import ExportOptions, TrimOptions
from xdt.errors import SYMLINK_LOOP, Preempted, XdtError, is_symlink_loop
from xdt.options import add_options, options_from

# Subcommands that later releases fill in; named now so that scripts and docs can rely on them.
QUICKSTART = "configs/quickstart.yaml"


def _load_run_config(args: argparse.Namespace):
    from xdt.assets import asset_path
    from xdt.config import load_config

    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not Path(config).exists():  # `xdt run key=value`: no config file given
        overrides.insert(0, config)
        config = None
    if getattr(args, "resume", None):
        overrides.append(f"output.resume={args.resume}")
    return load_config(config or asset_path(QUICKSTART), overrides)


def _run(args: argparse.Namespace) -> int:
    from xdt.engine.distributed import shutdown
    from xdt.recipes.run import run

    run(_load_run_config(args), overwrite=args.overwrite)
    shutdown()
    return 0


def _teacher_train(args: argparse.Namespace) -> int:
    from xdt.engine.distributed import is_main, shutdown
    from xdt.recipes.setup import start_run
    from xdt.recipes.teacher import train_teacher_step

    cfg = _load_run_config(args)
    _, _, data = start_run(cfg, "teacher", args.overwrite)
    result = train_teacher_step(cfg, data, Path(cfg.output.dir))
    if is_main():
        print(json.dumps(result))
    shutdown()
    return 0


def _teacher_cache(args: argparse.Namespace) -> int:
    from xdt.engine.distributed import init_distributed, is_main, shutdown
    from xdt.recipes.cache import cache_step
    from xdt.recipes.setup import prepare

    cfg = _load_run_config(args)
    teacher_dir = Path(cfg.teacher.model) if cfg.teacher.model else Path(cfg.output.dir) / "teacher"
    init_distributed()
    _, _, data = prepare(cfg)
    manifest = cache_step(cfg, data, teacher_dir)
    if is_main():
        print(json.dumps({k: manifest.get(k) for k in ("num_windows", "layers", "dtype", "teacher_hash")}))
    shutdown()
    return 0


def _distill(args: argparse.Namespace) -> int:
    from xdt.engine.distributed import is_main, shutdown
    from xdt.errors import ConfigError
    from xdt.recipes.distill import distill_step
    from xdt.recipes.setup import start_run

    cfg = _load_run_config(args)
    if not cfg.teacher.model:
        raise ConfigError("teacher.model: `xdt distill` needs a fine-tuned teacher folder (from `xdt teacher train`, "
                          "or use `xdt run` to do both)")
    _, _, data = start_run(cfg, "distill", args.overwrite)
    result = distill_step(cfg, data, Path(cfg.teacher.model), Path(cfg.output.dir))
    if is_main():
        print(json.dumps({k: v for k, v in result.items() if k != "history"}))
    shutdown()
    return 0


def _export(args: argparse.Namespace) -> int:
    from xdt.models.export import export_model, export_source

    opts = options_from(ExportOptions, args)
    if opts.format == "onnx":
        from xdt.deploy.onnx_export import export_onnx, summary_line

        manifest = export_onnx(opts.checkpoint, opts.out, quantize=opts.quantize, tokenizer=opts.tokenizer,
                               data=opts.data or None, langs=opts.langs, split=opts.split, tolerance=opts.tolerance,
                               int8_min_agreement=opts.int8_min_agreement, overwrite=opts.overwrite)
        print(summary_line(manifest))
        return 0
    if opts.quantize or opts.data:
        raise XdtError("--quantize and --data belong to --format onnx (the HF export is the fp32 model itself)")
    out = export_model(opts.checkpoint, opts.out, opts.tokenizer, opts.overwrite)
    source, tagged = export_source(opts.checkpoint)  # a run folder: its best dev model, as `xdt run` exports
    what = (f"DeepSpeed checkpoint {source}" if tagged else
            f"{source} (the run's best dev model)" if source.name == "student_best" else str(source))
    print(f"exported {what} -> {out}")
    return 0


def _trim(args: argparse.Namespace) -> int:
    from xdt.deploy.trim import summary_line, trim_model

    opts = options_from(TrimOptions, args)
    report = trim_model(opts.model, opts.data, opts.out, langs=opts.langs, split=opts.split, fmt=opts.format,
                        floor=opts.floor, floor_min_share=opts.floor_min_share, tokenizer=opts.tokenizer,
                        overwrite=opts.overwrite)
    print(json.dumps(report, ensure_ascii=False) if args.json else summary_line(report))
    return 0


def _add_config_args(parser: argparse.ArgumentParser, optional: bool = False, run_folder: bool = True) -> None:
    parser.add_argument("config", nargs="?" if optional else None,
                        help=f"run config YAML{' (default: ' + QUICKSTART + ')' if optional else ''}")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. student.hidden_size=256 data.langs=[de,en] (also after options)")
    parser.add_argument("--resume", choices=["auto", "never"],
                        help="auto: continue from the newest complete checkpoint in output.dir (output.resume)")
    if run_folder:
        parser.add_argument("--overwrite", action="store_true",
                            help="start over in an output.dir that holds another run or other files (deleted; never "
                                 "a folder that is, holds or lies inside the run's data, tokenizer or teacher)")


def _data_inspect(args: argparse.Namespace) -> int:
    from xdt.data.align import Aligner
    from xdt.data.cache import default_cache_dir
    from xdt.data.inspect import format_table, inspect_data
    from xdt.data.readers import ReadOptions
    from xdt.data.tokenizer import load_tokenizer
    from xdt.languages import parse_langs

    if args.max_seq_length is not None and args.tokenizer is None:
        raise XdtError("--max-seq-length needs --tokenizer DIR")
    aligner = None
    if args.tokenizer is not None:
        aligner = Aligner(load_tokenizer(args.tokenizer), args.max_seq_length or 128)
    opts = ReadOptions(strict=args.strict, lang=args.lang,
                       labels=None if args.any_tags else ReadOptions.labels)
    cache_dir = None if args.no_cache else Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    result = inspect_data(args.path, args.split, parse_langs(args.langs), args.format, opts, aligner, cache_dir)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(format_table(result))
    for line in result["skipped"] if args.json else []:
        print(f"skipped {line}", file=sys.stderr)
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from xdt.data.fetch import FetchRequest, fetch_wikiann
    from xdt.languages import parse_langs

    if bool(args.langs) == bool(args.suite):
        raise XdtError("xdt data fetch: pass one of --langs a,b or --suite NAME")
    if args.suite:
        from xdt.eval.suites import load_suite

        langs = list(load_suite(args.suite).languages)
    else:
        langs = parse_langs(args.langs)
    result = fetch_wikiann(FetchRequest(tuple(langs), Path(args.out), args.source, args.revision, args.overwrite,
                                        args.allow_missing))
    print("\n".join(result.summary()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xdt",
        description="Distil multilingual transformers into small mBERT-vocabulary students; score them per "
                    "language on WikiAnn.",
    )
    parser.add_argument("--version", action="version", version=f"xdt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="inspect and fetch data files")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    inspect = data_sub.add_parser(
        "inspect", help="sentences, words, tags per language; with --tokenizer, how they align",
        description="Counts per split and language of a WikiAnn path in any supported format (xtreme, raw, "
                    "xtremedistil, hf, text); with --tokenizer also aligned words, [UNK] words, windows and "
                    "sub-word length percentiles.")
    inspect.add_argument("path", help="data folder or file, or hf:NAME/CONFIG")
    inspect.add_argument("--split", help="train, dev (validation) or test; default: every split found")
    inspect.add_argument("--langs", help="comma-separated language codes; default: every language found")
    inspect.add_argument("--format", choices=DATA_FORMATS,
                         help="default: detected from the layout and content")
    inspect.add_argument("--lang", help="language of files whose lines do not name one")
    inspect.add_argument("--tokenizer", help="folder of a fast tokenizer (e.g. the mBERT vocabulary)")
    inspect.add_argument("--max-seq-length", type=int, help="sub-words per window, specials included (128)")
    inspect.add_argument("--strict", action="store_true", help="fail on malformed lines instead of skipping")
    inspect.add_argument("--any-tags", action="store_true",
                         help="accept any IOB tag, not only the WikiAnn set (O, B/I-PER, ORG, LOC)")
    inspect.add_argument("--cache-dir", help="aligned-split cache (default $XDT_CACHE or ~/.cache/xdt)")
    inspect.add_argument("--no-cache", action="store_true", help="align without reading or writing the cache")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(func=_data_inspect)
    fetch = data_sub.add_parser(
        "fetch", help="download WikiAnn (HF hub or a local save_to_disk copy) into a folder xdt reads offline",
        description="The HF wikiann configuration of each language -> DIR/{train,dev,test}-{lang}.tsv (the XTREME "
                    "layout that --data and data.path read) and DIR/manifest.json (source, revision, counts, "
                    "sha256; `xdt data inspect DIR` checks it). Files already in DIR are kept: the same content "
                    "is left alone, other content is refused unless --overwrite.")
    fetch.add_argument("dataset", choices=["wikiann"], help="the dataset to fetch")
    fetch.add_argument("--langs", help="comma-separated WikiAnn language codes, e.g. de,en,ar")
    fetch.add_argument("--suite", help="the languages of an eval suite (e.g. wikiann41, or a suite YAML path)")
    fetch.add_argument("--out", required=True, help="folder to write or add to")
    fetch.add_argument("--source", default="unimelb-nlp/wikiann",
                       help="HF hub dataset id (default unimelb-nlp/wikiann; needs internet) or a folder holding "
                            "DatasetDict.save_to_disk copies SRC/<lang>/ (offline)")
    fetch.add_argument("--revision", help="hub source: branch, tag or commit (default: main, pinned to its commit)")
    fetch.add_argument("--overwrite", action="store_true",
                       help="replace files in --out whose content differs (others are kept)")
    fetch.add_argument("--allow-missing", action="store_true",
                       help="skip languages a --source folder lacks (listed) instead of failing")
    fetch.set_defaults(func=_data_fetch)

    run = sub.add_parser("run", help="teacher, distillation, export and per-language eval in one command",
                         description="With no CONFIG: configs/quickstart.yaml (mock data, offline, CPU, minutes).")
    _add_config_args(run, optional=True)
    run.set_defaults(func=_run)

    teacher = sub.add_parser("teacher", help="fine-tune a multilingual teacher")
    teacher_sub = teacher.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    train = teacher_sub.add_parser("train", help="fine-tune teacher.model (or a random BERT) on the run's data; "
                                   "the best dev checkpoint goes to OUTPUT/teacher")
    _add_config_args(train)
    train.set_defaults(func=_teacher_train)
    cache = teacher_sub.add_parser("cache", help="cache the teacher's outputs on the transfer set "
                                   "(distill.teacher_cache), one shard per rank")
    _add_config_args(cache, run_folder=False)
    cache.set_defaults(func=_teacher_cache)

    distill = sub.add_parser("distill", help="distil teacher.model into a student through the stage schedule")
    _add_config_args(distill)
    distill.set_defaults(func=_distill)

    export = sub.add_parser("export", help="a trained student as a standard HF folder (safetensors + tokenizer)")
    add_options(export, ExportOptions)
    export.set_defaults(func=_export)

    trim = sub.add_parser(
        "trim", help="keep only the vocabulary pieces a corpus uses (smaller embeddings, same predictions on it)",
        description="A token-classification model folder + a corpus -> a new HF folder whose tokenizer and "
                    "word-embedding rows keep the pieces the corpus uses, the special tokens and a floor of single "
                    "characters of the scripts served. Every corpus word keeps its tokenization (checked).")
    add_options(trim, TrimOptions)
    trim.add_argument("--json", action="store_true", help="print the full report (also written as OUT/trim.json)")
    trim.set_defaults(func=_trim)

    from xdt.eval.cli import add_eval_parser
    from xdt.slurm.cli import add_slurm_parser
    from xdt.transfer.cli import add_transfer_parser

    add_eval_parser(sub)
    add_transfer_parser(sub)
    add_slurm_parser(sub)
    return parser


def _join_dashed_values(argv: list[str]) -> list[str]:
    """`--shard -1/2` -> `--shard=-1/2`: argparse reads a value that starts with a dash as an option (unless it is a
    plain negative number), which ends in "expected one argument"; joined, the option's own check names it."""
    out: list[str] = []
    for arg in argv:
        long_option = bool(out) and out[-1].startswith("--") and len(out[-1]) > 2 and "=" not in out[-1]
        if long_option and len(arg) > 1 and arg[0] == "-" and arg[1].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _refuse_symlink_loops(args: argparse.Namespace) -> None:
    """Every path given on the command line that is a symlink loop, in one line naming it (before any command
    reads it and calls it "not found", or Path.resolve() raises)."""
    for key, value in vars(args).items():
        if key in ("func", "overrides"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item and is_symlink_loop(item):
                raise XdtError(f"{item}: {SYMLINK_LOOP}; expected a file or folder")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as `main` reads it (argparse's SystemExit 2 on a bad one); nothing runs."""
    parser = build_parser()
    args, extra = parser.parse_known_args(_join_dashed_values(list(argv)))
    # `xdt run CONFIG --resume auto key=value`: argparse ends positionals at the first option; overrides that
    # follow one are still overrides
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("xdt").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        _refuse_symlink_loops(args)
        return args.func(args)
    except XdtError as err:
        print(f"xdt: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:  # checkpoint saved; the run continues with --resume auto
        from xdt.engine.preemption import EXIT_REQUEUE

        print(f"xdt: stopped: {stop}", file=sys.stderr)
        return EXIT_REQUEUE
    except BrokenPipeError:  # `xdt data inspect ... | head`
        return 0
