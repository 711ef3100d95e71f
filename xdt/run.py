"""`xdt run`: teacher, distillation stages, export and the per-language eval report, in one command.

Each step is one function of its own module; this file only chains them and records what each produced in
`OUTPUT/run.json`:
  data (mock or real) -> teacher fine-tuning (xdt.distill.teacher_train) -> student (xdt.models.student)
  -> distillation stages (xdt.distill.train) -> export (xdt.models.export) -> evaluation (xdt.eval.run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from xdt.config import RunConfig
from xdt.engine.distributed import init_distributed, is_main

log = logging.getLogger(__name__)


def prepare(cfg: RunConfig):
    """(data folder, tokenizer, task data) for a run: mock data and vocabulary generated when asked."""
    from xdt.config import MOCK
    from xdt.data.mock import materialize_mock, materialize_mock_transfer
    from xdt.data.tokenizer import load_tokenizer
    from xdt.distill.data import load_task_data
    from xdt.errors import ConfigError

    data_dir, tok_dir = materialize_mock(cfg)
    if cfg.data.task == "sequence":
        from xdt.data.classification import load_classification_data

        tokenizer = load_tokenizer(tok_dir)
        return data_dir, tokenizer, load_classification_data(cfg, data_dir, tokenizer, cfg.data.labels)
    if cfg.data.transfer == MOCK:
        if cfg.data.path != MOCK:
            raise ConfigError("data.transfer: 'mock' builds a code-switched set from the mock data; with real "
                              "data name a set built by `xdt transfer build`, or null for the training text")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, transfer=str(materialize_mock_transfer(cfg, data_dir))))
    tokenizer = load_tokenizer(tok_dir)
    return data_dir, tokenizer, load_task_data(cfg, str(data_dir), tokenizer)


def load_teacher_model(path: str | Path, labels: list[str], eager: bool, task: str = "token"):
    """A fine-tuned teacher folder for inference. Its label order must be the run's."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    from xdt.errors import XdtError

    kwargs = {"attn_implementation": "eager"} if eager else {}
    auto = AutoModelForSequenceClassification if task == "sequence" else AutoModelForTokenClassification
    model = auto.from_pretrained(str(path), use_safetensors=True, **kwargs)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if names != list(labels):
        raise XdtError(f"{path}: teacher labels {names} differ from the data's {labels}; fine-tune the teacher on "
                       "this label set (xdt teacher train)")
    return model


def train_teacher_step(cfg: RunConfig, data, out: Path) -> dict:
    """Fine-tune the teacher, or (resuming) take the one an earlier attempt of this run finished."""
    from xdt.distill.classify import loop_kwargs
    from xdt.distill.teacher_train import train_teacher

    done = out / "teacher_done.json"
    if cfg.output.resume == "auto" and done.exists():
        return json.loads(done.read_text())
    result = train_teacher(cfg, data, out, task=cfg.data.task, **loop_kwargs(cfg, data))
    summary = {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
               "stopped_early": result.stopped_early}
    if is_main():
        done.write_text(json.dumps(summary))
    return summary


def cache_keys(cfg: RunConfig, data) -> dict:
    from xdt.data.tokenizer import tokenizer_fingerprint
    from xdt.distill.teacher_cache import features_content_id

    return {"content_id": features_content_id(data.transfer.features),
            "tokenizer_fp": tokenizer_fingerprint(data.tokenizer), "max_seq_length": cfg.data.max_seq_length}


def cache_step(cfg: RunConfig, data, teacher_dir: Path) -> dict:
    """`xdt teacher cache`: the teacher's outputs on the transfer set, one shard per rank."""
    import numpy as np
    from transformers import AutoConfig

    from xdt.distill.teacher_cache import build_teacher_cache
    from xdt.distill.teacher_train import teacher_device_dtype
    from xdt.distill.train import cached_layers
    from xdt.engine.distributed import rank, world_size
    from xdt.errors import ConfigError
    from xdt.models.student import student_shape

    if not cfg.distill.teacher_cache:
        raise ConfigError("distill.teacher_cache: set the folder the cache goes to")
    tcfg = AutoConfig.from_pretrained(str(teacher_dir))
    layers = cached_layers(cfg, student_shape(cfg.student).num_layers, tcfg.num_hidden_layers)
    teacher = load_teacher_model(teacher_dir, data.labels, eager=False)
    dev, dtype = teacher_device_dtype()
    teacher.to(device=dev, dtype=dtype)
    return build_teacher_cache(teacher, data.transfer.features, cfg.distill.teacher_cache, layers=layers,
                               batch_size=cfg.eval.batch_size, teacher_path=teacher_dir, rank=rank(),
                               world=world_size(), dtype=getattr(np, cfg.distill.cache_dtype),
                               pad_id=data.tokenizer.pad_token_id, progress=is_main(), **cache_keys(cfg, data))


def _teacher_word_embeddings(teacher_dir: Path) -> torch.Tensor:
    """The teacher's word-embedding matrix from its safetensors, without building the model (SVD init)."""
    from safetensors import safe_open

    from xdt.errors import XdtError

    for path in sorted(Path(teacher_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.endswith("embeddings.word_embeddings.weight"):
                    return f.get_tensor(key)
    raise XdtError(f"{teacher_dir}: no *embeddings.word_embeddings.weight in its safetensors files")


def distill_step(cfg: RunConfig, data, teacher_dir: Path, out: Path) -> dict:
    from transformers import AutoConfig

    from xdt.distill.classify import loop_kwargs
    from xdt.distill.strategies import resolve_stages
    from xdt.distill.teacher_cache import TeacherCache, teacher_weights_hash
    from xdt.distill.teacher_train import teacher_device_dtype
    from xdt.distill.train import cached_layers, distill, stage_reads_cache
    from xdt.models.student import build_student, count_parameters

    eager = cfg.distill.attention_loss != "none"
    tcfg = AutoConfig.from_pretrained(str(teacher_dir))
    cache = None
    if cfg.distill.teacher_cache:
        if not (Path(cfg.distill.teacher_cache) / "manifest.json").exists():
            cache_step(cfg, data, teacher_dir)
        layers = cached_layers(cfg, cfg.student.num_layers, tcfg.num_hidden_layers)
        cache = TeacherCache.open(cfg.distill.teacher_cache, teacher_hash=teacher_weights_hash(teacher_dir),
                                  layers_needed=layers, **cache_keys(cfg, data))
    needs_live = any(s.losses.get(t, 0) > 0 for s in resolve_stages(cfg) if not stage_reads_cache(s, cache, cfg)
                     for t in ("hidden", "attention", "logits"))
    svd = cfg.student.embedding_init in ("svd", "pca") and not cfg.student.init_from
    teacher = load_teacher_model(teacher_dir, data.labels, eager, cfg.data.task) if needs_live or \
        cfg.student.embedding_init == "teacher" else None
    torch.manual_seed(cfg.seed)  # the student's random initialisation is part of what a seed reproduces
    student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels, task=cfg.data.task,
                            teacher=teacher,
                            teacher_word_embeddings=_teacher_word_embeddings(teacher_dir) if svd and teacher is None
                            else None, pad_token_id=data.tokenizer.pad_token_id,
                            attn_implementation="eager" if eager else None, attention_dropout=0.0 if eager else None)
    dev, dtype = teacher_device_dtype()
    sizes = {"teacher_parameters": count_parameters(teacher) if teacher is not None else None,
             "student_parameters": count_parameters(student)}  # before ZeRO-3 partitions them
    result = distill(cfg, data, teacher, student, out, dev, dtype, cache=cache, teacher_config=tcfg,
                     **loop_kwargs(cfg, data))
    return {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
            "history": result.history, "teacher_loaded": teacher is not None, **sizes}


def evaluate_step(cfg: RunConfig, student_dir: Path, teacher_dir: Path, data_dir: Path, out: Path) -> dict:
    from xdt.eval.run import EvalOptions, evaluate

    opts = EvalOptions(model=str(student_dir), teacher=str(teacher_dir), data=[str(data_dir)], out=str(out),
                       suite=cfg.eval.suite, langs=None if cfg.eval.suite else cfg.data.langs,
                       split=cfg.eval.split, format=cfg.data.format, batch_size=cfg.eval.batch_size,
                       max_seq_length=cfg.data.max_seq_length, progress=is_main(),
                       allow_missing=cfg.eval.suite is not None)
    return evaluate(opts)


def run(cfg: RunConfig) -> dict:
    from xdt.eval.report import summary_lines
    from xdt.models.export import export_model

    init_distributed()
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data_dir, tokenizer, data = prepare(cfg)
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

    summary = {"config": asdict(cfg), "data": str(data_dir), "labels": data.labels, "teacher": teacher,
               "distill": distilled}
    if is_main():
        t = time.perf_counter()
        student_dir = export_model(distilled["path"], out / "student", overwrite=True)
        timings["export_s"] = time.perf_counter() - t
        t = time.perf_counter()
        if cfg.data.task == "sequence":
            from xdt.distill.classify import evaluate_classifiers, report_lines

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
        (out / "run.json").write_text(json.dumps(summary, indent=2, default=str))
        print("\n".join(lines))
        print(f"report: {out / 'eval' / 'report.md'}  student: {student_dir}  ({timings['total_s']:.0f} s)")
    return summary
