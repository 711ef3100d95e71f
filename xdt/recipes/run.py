"""`xdt run`: teacher, distillation stages, export and the per-language eval report, in one command.

Each step is a recipe of its own; this file chains them and records what each produced in `OUTPUT/run.json`:
  data (mock or real, recipes.setup) -> teacher fine-tuning (recipes.teacher) -> distillation stages
  (recipes.distill) -> export (xdt.models.export) -> evaluation (xdt.eval.run).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from xdt.config import RunConfig
from xdt.engine.distributed import is_main
from xdt.eval.classify import evaluate_classifiers, report_lines
from xdt.eval.options import EvalOptions
from xdt.eval.report import summary_lines
from xdt.eval.run import evaluate
from xdt.models.export import export_model
from xdt.outputs import RUN_DONE
from xdt.recipes.distill import distill_step
from xdt.recipes.setup import recorded_config, start_run
from xdt.recipes.teacher import train_teacher_step


def evaluate_step(cfg: RunConfig, student_dir: Path, teacher_dir: Path, data_dir: Path, out: Path) -> dict:
    opts = EvalOptions(model=str(student_dir), teacher=str(teacher_dir), data=[str(data_dir)], out=str(out),
                       suite=cfg.eval.suite, langs=None if cfg.eval.suite else cfg.data.langs,
                       split=cfg.eval.split, format=cfg.data.format, batch_size=cfg.eval.batch_size,
                       max_seq_length=cfg.data.max_seq_length, progress=is_main(),
                       allow_missing=cfg.eval.suite is not None, overwrite=True)  # the run's own eval folder
    return evaluate(opts)


def run(cfg: RunConfig, overwrite: bool = False) -> dict:
    out = Path(cfg.output.dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir, tokenizer, data = start_run(cfg, "run", overwrite)  # nothing is written before this
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    if cfg.teacher.model and cfg.teacher.epochs == 0:  # an already fine-tuned teacher
        teacher = {"path": cfg.teacher.model, "trained": False}
    else:
        teacher = train_teacher_step(cfg, data, out)
    timings["teacher_s"] = time.perf_counter() - t

    t = time.perf_counter()
    distilled = distill_step(cfg, data, Path(teacher["path"]), out)
    timings["distill_s"] = time.perf_counter() - t

    summary = {"config": recorded_config(cfg), "data": str(data_dir), "labels": data.labels, "teacher": teacher,
               "distill": distilled}
    if is_main():
        t = time.perf_counter()
        student_dir = export_model(distilled["path"], out / "student", overwrite=True)
        timings["export_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if cfg.data.task == "sequence":
            report = evaluate_classifiers(cfg, {"student": student_dir, "teacher": teacher["path"]}, data_dir,
                                          tokenizer, data.labels, out / "eval")
            lines = report_lines(report)
            scores = {"mean_accuracy": report["student"]["mean_accuracy"],
                      "teacher_mean_accuracy": report["teacher"]["mean_accuracy"]}
        else:
            report = evaluate_step(cfg, student_dir, Path(teacher["path"]), data_dir, out / "eval")
            lines = summary_lines(report)
            scores = {"mean_f1": report["mean_f1"], "teacher_mean_f1": report.get("teacher", {}).get("mean_f1")}
        timings["eval_s"] = time.perf_counter() - t
        summary.update({"student": str(student_dir), "eval": str(out / "eval" / "report.json"), **scores})
        timings["total_s"] = time.perf_counter() - t0
        summary["timing"] = {k: round(v, 2) for k, v in timings.items()}
        (out / RUN_DONE).write_text(json.dumps(summary, indent=2, default=str))
        print("\n".join(lines))
        print(f"report: {out / 'eval' / 'report.md'}  student: {student_dir}  ({timings['total_s']:.0f} s)")
    return summary
