"""benchmarks/quality.py without training: its flags, the configs and `xdt` commands it generates (parsed by xdt's
own config loader and CLI parser), the refusal of a non-empty work folder and the reuse of finished steps."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_subprocess(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the test started a process: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_defaults_full_and_explicit_flags(quality, tmp_path):
    args = quality.parse_args(["--work", str(tmp_path / "w")])
    assert args.tracks == ["a", "b"] and args.presets == quality.PRESETS and args.langs == quality.B_LANGS
    assert (args.a_train, args.steps, args.b_budget) == (quality.CPU_DEFAULTS["a_train"],
                                                         quality.CPU_DEFAULTS["steps"], 500)
    # D0-S gets the labeled steps of D4.2's label stage: head, each layer, embedding projection, embeddings
    # (track A's teacher-cut student has 2 layers, track B's 4)
    assert (args.d0_steps, args.b_d0_steps) == (args.steps * 5, args.b_steps * 7)
    assert quality.optimizer_steps("D4.2", args, 10) == 10 * (1 + 2 * 5)
    assert quality.optimizer_steps("D4.2", args, 10, "b") == 10 * (1 + 2 * 7)
    assert (args.threads, args.test_limit, args.b_test_limit) == (1, 0, 2000)
    full = quality.parse_args(["--full", "--a-dev", "300"])
    assert (full.a_train, full.steps, full.b_teacher_train, full.b_transfer, full.a_dev) == (0, 0, 0, 0, 300)
    assert (full.threads, full.b_test_limit, full.jobs) == (0, 0, 1)
    assert args.jobs == max(1, os.cpu_count() or 1) and quality.parse_args(["--jobs", "1"]).jobs == 1
    small = quality.parse_args(["--tracks", "a", "--presets", "D0-S,D4.2", "--steps", "5", "--d0-steps", "9",
                                "--langs", "en,hi"])
    assert (small.tracks, small.presets, small.steps, small.d0_steps, small.langs) == \
        (["a"], ["D0-S", "D4.2"], 5, 9, ["en", "hi"])


@pytest.mark.parametrize("argv", [["--presets", "D5"], ["--tracks", "d"], ["--resume", "--overwrite"],
                                  ["--steps", "-1"], ["--b-budget", "0"], ["--seeds", "0"],
                                  ["--jobs", "0"]])
def test_bad_flags(quality, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quality.parse_args(argv)
    assert exit_info.value.code == 2


def _teacher_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "config.json").write_text('{"num_hidden_layers": 6}')
    return folder


def test_generated_configs_and_commands_parse(quality, tmp_path):
    from xdt.cli import build_parser
    from xdt.config import load_config
    from xdt.transfer.config import load_transfer_config

    args = quality.parse_args(["--work", str(tmp_path / "w"), "--steps", "4", "--a-train", "200", "--a-dev", "50",
                               "--langs", "en,ar,hi", "--test-limit", "100", "--b-test-limit", "30"])
    quality.prepare_work(args)
    teacher_dir = _teacher_folder(tmp_path)
    plans = {"a": quality.plan_track_a(args, teacher_dir), "b": quality.plan_track_b(args)}
    for plan in plans.values():
        quality.write_configs(plan, args)
    configs = args.work / "configs"
    assert sorted(p.name for p in configs.iterdir()) == ["track_a_students.yaml", "track_a_teacher.yaml",
                                                        "track_b_students.yaml", "track_b_teacher.yaml",
                                                        "transfer_codeswitch.yaml", "transfer_plain.yaml"]
    parser = build_parser()
    seen = {"a": {}, "b": {}}
    for track, plan in plans.items():
        names = [s.name for s in plan.steps]
        assert len(names) == len(set(names))
        for step in plan.steps:
            ns = parser.parse_args(step.argv)  # every command is one the `xdt` CLI accepts
            if step.argv[0] in ("teacher", "distill"):
                cfg = load_config(ns.config, ns.overrides, check=False)
                seen[track][step.name] = cfg
            elif step.argv[:2] == ["transfer", "build"]:
                seen[track][step.name] = load_transfer_config(ns.config, ns.overrides, check=False)
            elif step.argv[0] == "eval":
                assert ns.split == "test" and ns.max_sentences == {"a": 100, "b": 30}[track]
                assert (ns.compare is None) == step.name.endswith("/teacher")  # students: the teacher's column

    a = seen["a"]
    teacher = a["a/teacher"]
    assert teacher.teacher.model == str(teacher_dir) == teacher.tokenizer.path
    assert (teacher.data.langs, teacher.data.limit, teacher.data.dev_limit, teacher.data.transfer) == \
        (["en"], 200, 50, None)
    finetuned = str(args.work / "a" / "teacher_run" / "teacher")
    cache = a["a/cache"]
    assert cache.distill.strategy == "D4.2" and cache.data.transfer.endswith("train-en.tsv")
    assert args.seed_list == [42, 7, 1]
    for preset in quality.PRESETS:
        for seed in args.seed_list:  # every preset at every seed, on one teacher and one cache
            cfg = a[f"a/distill/{preset}/s{seed}"]
            assert cfg.seed == seed and cfg.output.dir.endswith(f"students/{preset}/s{seed}")
        assert cfg.distill.strategy == preset and cfg.teacher.model == finetuned == cfg.tokenizer.path
        assert cfg.distill.teacher_cache == cache.distill.teacher_cache  # one cache for every preset
        assert cfg.distill.steps == (20 if preset == "D0-S" else 4)  # head, 2 layers, projection, embeddings
        # fair to D0-S: a dev evaluation after as many steps as a staged preset's unfreeze step, its own rate
        assert (cfg.distill.eval_every, cfg.distill.lr) == ((4, args.a_d0_lr) if preset == "D0-S" else (0, args.a_lr))
        assert (cfg.student.num_layers, cfg.student.hidden_size, cfg.student.embedding_size) == (2, 384, 64)
        assert cfg.student.embedding_init == "teacher" and cfg.distill.layer_map == [-1, 3, 6]
        assert cfg.data.transfer.endswith("train-en.tsv") and cfg.data.limit == 200
        # the representation stage of the staged presets: its own budget, every layer at once
        assert cfg.distill.representation_steps == quality.CPU_DEFAULTS["a_representation_steps"] == 2250
        stages = [(s.name, s.steps) for s in cfg.stages]
        assert (stages[0] == ("representations", 2250)) == preset.startswith(("D3", "D4"))

    b = seen["b"]
    assert b["b/teacher"].teacher.model == "" and b["b/teacher"].data.langs == ["en", "ar", "hi"]
    assert b["b/teacher"].teacher.batch_size == args.b_teacher_batch
    assert b["b/teacher"].data.limit == args.b_teacher_train
    assert b["b/teacher"].tokenizer.path.endswith("bert-base-multilingual-cased")
    plain, switched = b["b/transfer/plain"], b["b/transfer/codeswitch"]
    assert plain.augment.codeswitch.rate == 0 and switched.augment.codeswitch.rate > 0
    assert switched.resources.dictionaries.endswith("muse")
    assert plain.sources[0].kind == "labeled" and plain.sources[0].langs == ["en", "ar", "hi"]
    assert plain.sampling.max_per_lang == args.b_transfer
    for variant, kind in (("D0-S", "plain"), ("D4.2", "plain"), ("D4.2+codeswitch", "codeswitch")):
        assert {b[f"b/distill/{variant}/s{seed}"].seed for seed in args.seed_list} == set(args.seed_list)
        cfg = b[f"b/distill/{variant}/s42"]
        assert cfg.distill.lr == (args.b_d0_lr if variant == "D0-S" else args.b_lr)
        assert cfg.data.limit == 500 and cfg.distill.strategy == variant.split("+")[0]
        assert cfg.teacher.model == str(args.work / "b" / "teacher_run" / "teacher")
        assert cfg.distill.steps == (args.b_steps * 7 if variant == "D0-S" else args.b_steps)
        assert cfg.data.transfer.endswith(f"transfer/{kind}")
        assert cfg.distill.teacher_cache == b[f"b/cache/{kind}"].distill.teacher_cache


@pytest.mark.data
def test_track_c_configs_and_commands_parse(quality, tmp_path):
    """Track C: the e5 conversion, a teacher with its own tokenizer (frozen embeddings), mBERT-vocabulary students
    over three seeds (the teacher once), every student scored with the wikiann41 suite on both data layouts."""
    from xdt.cli import build_parser
    from xdt.config import load_config
    from xdt.transfer.config import load_transfer_config

    from .conftest import SHARED_DATA, need

    need(SHARED_DATA / "wikiann" / "raw")
    args = quality.parse_args(["--work", str(tmp_path / "w"), "--tracks", "c", "--c-steps", "5"])
    assert args.seed_list == [42, 7, 1] and len(args.c_langs) == 30 and {"bs", "ca", "hr", "lv", "en"} <= \
        set(args.c_langs)
    quality.prepare_work(args)
    plan = quality.track_c.plan(args)
    quality.write_configs(plan, args)
    data = args.work / "c" / "data"
    assert sorted(p.name for p in data.iterdir()) == sorted(args.c_langs)
    assert (data / "bs" / "train").resolve() == (SHARED_DATA / "wikiann" / "raw" / "bs" / "train").resolve()
    assert (data / "af" / "dev").resolve() == (SHARED_DATA / "wikiann" / "xtreme" / "dev-af.tsv").resolve()

    parser = build_parser()
    steps = {s.name: s for s in plan.steps}
    assert steps["c/e5"].program[-1].endswith("benchmarks/e5_teacher.py") and steps["c/e5"].argv[0] == "--out"
    distills = [n for n in steps if n.startswith("c/distill/")]
    assert len(distills) == 9 and sum(n.endswith("/s7") for n in distills) == 3
    for name, step in steps.items():
        if step.program:
            continue
        ns = parser.parse_args(step.argv)
        if step.argv[0] == "export":
            assert ns.checkpoint.endswith("student_best")
        elif step.argv[0] == "eval":
            assert ns.suite == "wikiann41" and ns.allow_missing and len(ns.data) == 2
            assert (ns.compare is None) == (name == "c/eval/teacher")
        elif step.argv[:2] == ["transfer", "build"]:
            cfg = load_transfer_config(ns.config, ns.overrides, check=False)
            assert cfg.sampling.max_per_lang == 1000 and cfg.sources[0].langs == args.c_langs
            assert (cfg.augment.codeswitch.rate > 0) == name.endswith("codeswitch")
        else:
            cfg = load_config(ns.config, ns.overrides, check=False)
            if name == "c/teacher":
                assert cfg.teacher.model == str(args.work / "c" / "e5") and cfg.teacher.freeze_embeddings
                assert cfg.tokenizer.path.endswith("bert-base-multilingual-cased") and cfg.data.limit == 300
            elif name.startswith("c/distill/"):
                variant, seed = name.split("/")[2:]
                assert cfg.seed == int(seed[1:]) and cfg.distill.strategy == variant.split("+")[0]
                assert cfg.distill.steps == (5 * 7 if variant == "D0-S" else 5)  # head, 4 layers, projection, emb.
                assert cfg.distill.eval_every == (5 if variant == "D0-S" else 0) and cfg.data.limit == 100
                assert cfg.distill.representation_steps == 300 and cfg.distill.logit_loss == "kl"
                assert cfg.student.embedding_init == "teacher" and cfg.distill.layer_map == [-1, 3, 6, 9, 12]
                assert cfg.data.transfer.endswith("codeswitch" if variant.endswith("codeswitch") else "plain")


def test_refuses_non_empty_work_folder(quality, tmp_path, no_subprocess, capsys):
    work = tmp_path / "w"
    work.mkdir()
    (work / "earlier.txt").write_text("x")
    assert quality.main(["--work", str(work), "--tracks", "a", "--results", str(tmp_path / "r")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (work / "earlier.txt").exists() and not (tmp_path / "r.json").exists()
    args = quality.parse_args(["--work", str(work), "--overwrite"])
    quality.prepare_work(args)
    assert not (work / "earlier.txt").exists() and (work / "configs").is_dir()


def test_resume_reuses_only_unchanged_finished_steps(quality, tmp_path, no_subprocess):
    args = quality.parse_args(["--work", str(tmp_path / "w"), "--resume"])
    quality.prepare_work(args)
    out = args.work / "out"
    out.mkdir()
    step = quality.Step("a/eval/teacher", ["eval", "--out", str(out)], out)
    (args.work / "steps" / step.marker_name).write_text(json.dumps({"argv": step.argv, "seconds": 3.0}))
    assert sys.modules["quality_runner"].run_step(step, args, Path("xdt"), {})["reused"] is True
    changed = quality.Step("a/eval/teacher", ["eval", "--out", str(out), "--langs", "en"], out, [out])
    with pytest.raises(AssertionError, match="started a process"):  # another command: run again, not reused
        sys.modules["quality_runner"].run_step(changed, args, Path("xdt"), {})


def test_resume_reruns_a_step_whose_input_ran_again(quality, tmp_path, no_subprocess):
    args = quality.parse_args(["--work", str(tmp_path / "w"), "--resume"])
    quality.prepare_work(args)
    out = args.work / "eval"
    out.mkdir()
    step = quality.Step("a/eval/D4.2", ["eval", "--out", str(out)], out, [out], ["a/export/D4.2"])
    (args.work / "steps" / step.marker_name).write_text(json.dumps({"argv": step.argv, "seconds": 3.0}))
    with pytest.raises(AssertionError, match="started a process"):
        sys.modules["quality_runner"].run_step(step, args, Path("xdt"), {}, rerun={"a/export/D4.2"})


def test_lr_grid_plans_dev_only_runs_and_chooses_the_best_rate(quality, tmp_path):
    args = quality.parse_args(["--work", str(tmp_path / "w"), "--lr-grid", "3e-4,1e-3", "--steps", "4",
                               "--langs", "en,hi"])
    assert args.lr_grid == [3e-4, 1e-3] and args.results.name == "quality-lr-grid"
    quality.prepare_work(args)
    plans = {"a": quality.plan_track_a(args, _teacher_folder(tmp_path)), "b": quality.plan_track_b(args)}
    names = [s.name for plan in plans.values() for s in plan.steps]
    assert not [n for n in names if "/eval/" in n or "/export/" in n or "codeswitch" in n]  # nothing on test
    grid = [n for n in names if "/grid/" in n]
    assert grid == [f"{t}/grid/{v}/lr{lr}" for t in "ab" for v in ("D0-S", "D4.2") for lr in ("0.0003", "0.001")]
    step = next(s for s in plans["a"].steps if s.name == "a/grid/D0-S/lr0.0003")
    assert "distill.lr=0.0003" in step.argv and "seed=42" in step.argv and "distill.eval_every=4" in step.argv
    assert sum(a.startswith("distill.lr=") for a in step.argv) == 1
    for plan, dev in ((plans["a"], {0.0003: 50.0, 0.001: 61.5}), (plans["b"], {0.0003: 40.25, 0.001: 39.0})):
        for variant in ("D0-S", "D4.2"):
            for lr, f1 in dev.items():
                run = plan.paths[f"grid/{variant}/{lr:g}"]
                run.mkdir(parents=True)
                rows = [{"step": 4, "distill/dev_f1": f1 - 3}, {"step": 8, "distill/dev_f1": f1}]
                (run / "distill.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    grid = quality.results_grid(args, plans)
    assert grid["track_a"]["D0-S"]["dev_f1"] == {"0.0003": 50.0, "0.001": 61.5}
    assert grid["track_a"]["D4.2"]["chosen_lr"] == 1e-3 and grid["track_b"]["D0-S"]["chosen_lr"] == 3e-4
    assert "| A | D0-S | 50.00 | 61.50 | 0.001 |" in "\n".join(quality.grid_markdown(grid))
    grid["track_b"]["D4.2"]["dev_f1"] = {"0.001": 39.0, "0.003": 12.5}  # another track's rates: one column each
    table = "\n".join(quality.grid_markdown(grid))
    assert "| track | variant | lr 0.0003 | lr 0.001 | lr 0.003 | chosen |" in table
    assert "| B | D4.2 | - | 39.00 | 12.50 |" in table


@pytest.mark.parametrize("argv", [["--lr-grid", "1e-3,x"], ["--lr-grid", "0"], ["--lr-grid", "1e-3", "--tracks", "c"],
                                  ["--a-d0-lr", "0"]])
def test_bad_lr_flags(quality, argv):
    with pytest.raises(SystemExit) as exit_info:
        quality.parse_args(argv)
    assert exit_info.value.code == 2


def test_seed_statistics_and_the_papers_ordering(quality):
    stats = quality.seed_stats({42: 58.0, 7: 60.0, 1: 62.0})
    assert stats == {"f1": 60.0, "f1_std": 2.0, "f1_seeds": {"42": 58.0, "7": 60.0, "1": 62.0}}
    d0 = quality.seed_stats({42: 55.0, 7: 55.0, 1: 55.0})
    assert quality.beyond_noise(stats, d0) == (5.0, round(2 * (2.0 ** 2 / 2) ** 0.5, 2))  # 2 * sqrt(mean var)
    students = {"D0-S": d0, "D1": quality.seed_stats({42: 54.0, 7: 54.5, 1: 55.5}), "D4.2": stats}
    order = {o["paper"]: o for o in quality.paper_ordering(students)}
    assert list(order) == ["D0-S < D1", "D0-S < D4.2", "D1 < D4.2"]  # Table 3 ranks D0-S < D1 < D4.2
    assert order["D0-S < D4.2"]["result"] == "holds"  # +5.00 against 2 x 1.41
    assert order["D0-S < D1"]["result"] == "within noise"  # -0.33 against 2 x 0.54
    assert order["D1 < D4.2"]["gap"] == 5.33


def _writer(quality, work: Path, name: str, deps: list[str], seconds: float, fail: bool = False):
    """A step whose process sleeps, then records when it started and ended in its output file."""
    out = work / f"{name}.json"
    code = (f"import json, sys, time; t = time.time(); time.sleep({seconds}); "
            f"sys.exit(3) if {fail} else open({str(out)!r}, 'w').write(json.dumps([t, time.time()]))")
    return quality.Step(name, ["-c", code], out, [], deps, program=[sys.executable])


def test_steps_run_at_once_when_what_they_read_has_finished(quality, tmp_path):
    import argparse

    args = argparse.Namespace(work=tmp_path, resume=False)
    for sub in ("logs", "steps"):
        (tmp_path / sub).mkdir()
    steps = [_writer(quality, tmp_path, "teacher", [], 1.0), _writer(quality, tmp_path, "other", [], 0.2),
             _writer(quality, tmp_path, "student", ["teacher"], 0.2),
             _writer(quality, tmp_path, "eval", ["student", "other"], 0.0)]
    t0 = time.time()
    done = quality.run_steps(steps, args, Path(sys.executable), lambda step: dict(os.environ), jobs=2)
    span = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in done}
    assert list(done) and set(done) == {"teacher", "other", "student", "eval"}
    assert span["other"][0] < span["teacher"][1]  # ran beside the teacher
    assert span["student"][0] >= span["teacher"][1] and span["eval"][0] >= span["student"][1]
    assert time.time() - t0 < 1.0 + 0.2 + 0.2 + 0.2 + 3.0  # not one after the other: teacher + student + eval
    # a failed step: what reads it never starts, the running one finishes, the error names the step
    for sub in ("logs", "steps"):
        (tmp_path / "again" / sub).mkdir(parents=True)
    args.work = tmp_path / "again"
    failing = [_writer(quality, args.work, "teacher", [], 0.1, fail=True), _writer(quality, args.work, "other", [], 0.5),
               _writer(quality, args.work, "student", ["teacher"], 0.0)]
    with pytest.raises(quality.BenchError, match="step teacher failed"):
        quality.run_steps(failing, args, Path(sys.executable), lambda step: dict(os.environ), jobs=2)
    assert (args.work / "other.json").is_file() and not (args.work / "student.json").exists()
