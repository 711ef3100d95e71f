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

from xdt.config import TEACHER_TERMS, RunConfig
from xdt.engine.distributed import init_distributed, is_main

log = logging.getLogger(__name__)

# Completion notes in output.dir, written after everything else of their step
TEACHER_DONE, DISTILL_DONE = "teacher_done.json", "distill_done.json"


def prepare(cfg: RunConfig):
    """(data folder, tokenizer, task data) for a run: mock data and vocabulary generated when asked."""
    from xdt.config import MOCK
    from xdt.data.mock import materialize_mock, materialize_mock_transfer
    from xdt.data.tokenizer import has_tokenizer, load_tokenizer
    from xdt.distill.data import load_task_data
    from xdt.errors import ConfigError

    data_dir, tok_dir = materialize_mock(cfg)
    tokenizer = load_tokenizer(tok_dir)
    # a teacher folder with a tokenizer of its own is read with it; where that is not the student's, per word
    teacher_tokenizer = load_tokenizer(cfg.teacher.model) if cfg.teacher.model and has_tokenizer(cfg.teacher.model) \
        else None
    if cfg.data.task == "sequence":
        from xdt.data.classification import load_classification_data
        from xdt.data.tokenizer import tokenizer_fingerprint

        if teacher_tokenizer is not None and tokenizer_fingerprint(teacher_tokenizer) != \
                tokenizer_fingerprint(tokenizer):
            raise ConfigError(f"teacher.model: {cfg.teacher.model} has another tokenizer than tokenizer.path; "
                              "data.task sequence needs one tokenizer (cross-tokenizer distillation is per word, NER)")
        return data_dir, tokenizer, load_classification_data(cfg, data_dir, tokenizer, cfg.data.labels)
    if cfg.data.transfer == MOCK:
        if cfg.data.path != MOCK:
            raise ConfigError("data.transfer: 'mock' builds a code-switched set from the mock data; with real "
                              "data name a set built by `xdt transfer build`, or null for the training text")
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, transfer=str(materialize_mock_transfer(cfg, data_dir))))
    return data_dir, tokenizer, load_task_data(cfg, str(data_dir), tokenizer, teacher_tokenizer=teacher_tokenizer)


def run_parts(cfg: RunConfig, command: str) -> list[str]:
    """What a training command writes into output.dir: the teacher's part, the student's (distill), or both."""
    if command in ("teacher", "distill"):
        return [command]
    return ["distill"] if cfg.teacher.model and cfg.teacher.epochs == 0 else ["teacher", "distill"]


def _model_config(folder: str, key: str):
    """The config.json of a model folder the run reads, with its weight files checked whole."""
    from transformers import AutoConfig

    from xdt.engine.safe_load import check_model_weights
    from xdt.errors import ConfigError

    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{key}: cannot read {folder}/config.json: {' '.join(str(err).split())[:200]}") from None
    check_model_weights(folder, key)  # safetensors, whole; a pickled .bin is refused before torch opens it
    return config


def _check_positions(cfg: RunConfig, config, who: str) -> None:
    from xdt.errors import ConfigError

    positions = getattr(config, "max_position_embeddings", None)
    if positions and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # their position ids start after the padding index
    if positions and cfg.data.max_seq_length > positions:
        raise ConfigError(f"data.max_seq_length: {cfg.data.max_seq_length} exceeds the {positions} positions of "
                          f"{who}; lower it (longer sentences are split into windows, no word is lost)")


def _check_epochs(cfg: RunConfig, parts: list[str]) -> None:
    """teacher.epochs 0 means "use teacher.model, already fine-tuned, as it is" (`xdt run`, `xdt distill`); a
    command that trains the teacher with it would train one step and go on with an untrained teacher."""
    from xdt.errors import ConfigError

    if "teacher" not in parts or cfg.teacher.epochs > 0:
        return
    if not cfg.teacher.model:
        raise ConfigError(f"teacher.epochs: {cfg.teacher.epochs:g} trains no teacher, and teacher.model is empty (0 "
                          "means: use teacher.model, fine-tuned, as it is); expected a positive number of epochs, "
                          "or a fine-tuned teacher.model")
    raise ConfigError(f"teacher.epochs: {cfg.teacher.epochs:g} trains nothing in `xdt teacher train`; expected a "
                      "positive number of epochs (0 means: use teacher.model as it is, with `xdt run` or `xdt "
                      "distill`)")


def check_run(cfg: RunConfig, data, data_dir: Path, parts: list[str], evaluate: bool) -> None:
    """What would otherwise fail mid-run, checked before anything is written: the models' folders (safetensors,
    whole), shapes and vocabularies, the layer map, positions against data.max_seq_length, the DeepSpeed file
    as each engine fills it, epochs, and that every language of data.langs has data."""
    from transformers import BertConfig

    from xdt.engine.distributed import world_size
    from xdt.engine.ds_config import build_ds_config
    from xdt.errors import ConfigError
    from xdt.models.layer_map import resolve_layer_map, teacher_layers_to_copy
    from xdt.models.student import student_shape

    from xdt.distill.train import check_cross_tokenizer

    check_cross_tokenizer(cfg, data)
    _check_epochs(cfg, parts)
    pieces = len(data.tokenizer)
    teacher_tokenizer = getattr(data, "teacher_tokenizer", data.tokenizer)  # the folder's own, where it has one
    if cfg.teacher.model:
        tcfg = _model_config(cfg.teacher.model, "teacher.model")
        who = f"teacher.model {cfg.teacher.model}"
        rows = getattr(tcfg, "vocab_size", None)
        if rows is not None and rows < len(teacher_tokenizer):  # larger is fine: some checkpoints pad the matrix
            where = "its own tokenizer" if teacher_tokenizer is not data.tokenizer else \
                f"the tokenizer (tokenizer.path {cfg.tokenizer.path})"
            raise ConfigError(f"teacher.model: {cfg.teacher.model} has {rows} word embeddings, fewer than the "
                              f"{len(teacher_tokenizer)} pieces of {where}; use the teacher's own tokenizer")
    else:  # the random BERT build_teacher makes (transformers' default of 512 positions)
        tcfg = BertConfig(num_hidden_layers=cfg.teacher.num_layers, hidden_size=cfg.teacher.hidden_size,
                          num_attention_heads=cfg.teacher.num_heads)
        who = "the teacher (a random BERT)"
    _check_positions(cfg, tcfg, who)
    if "teacher" in parts:  # the file as the teacher's engine fills it: no "auto" left, batch sizes that agree
        build_ds_config(cfg.deepspeed, cfg.teacher.batch_size, world_size(), tcfg.hidden_size)
    if "distill" in parts:
        if cfg.student.init_from:
            scfg = _model_config(cfg.student.init_from, "student.init_from")
            _check_positions(cfg, scfg, f"student.init_from {cfg.student.init_from}")
            if getattr(scfg, "vocab_size", pieces) != pieces:
                raise ConfigError(f"student.init_from: {cfg.student.init_from} has a vocabulary of "
                                  f"{scfg.vocab_size} pieces, the tokenizer {pieces}; the student must keep the "
                                  "tokenizer's vocabulary")
            student_layers, student_hidden = scfg.num_hidden_layers, scfg.hidden_size
        else:
            student_layers, student_hidden = (student_shape(cfg.student).num_layers,
                                              student_shape(cfg.student).hidden_size)
        build_ds_config(cfg.deepspeed, cfg.distill.batch_size, world_size(), student_hidden)
        teacher_layers = tcfg.num_hidden_layers
        if cfg.distill.teacher_cache or any(s.losses.get("hidden", 0) > 0 for s in cfg.stages):
            resolve_layer_map(cfg.distill.layer_map, student_layers, teacher_layers)
        if cfg.student.embedding_init == "teacher" and not cfg.student.init_from:
            teacher_layers_to_copy(cfg.distill.layer_map, student_layers, teacher_layers)  # as distill_step copies
        cache = Path(cfg.distill.teacher_cache or "") / "manifest.json"
        if cfg.distill.teacher_cache and "teacher" not in parts and cache.is_file():  # stale or damaged: now
            from xdt.distill.teacher_cache import TeacherCache, teacher_weights_hash
            from xdt.distill.train import cached_layers

            TeacherCache.open(cfg.distill.teacher_cache, teacher_hash=teacher_weights_hash(cfg.teacher.model),
                              layers_needed=cached_layers(cfg, student_layers, teacher_layers),
                              **cache_keys(cfg, data))
        if "teacher" not in parts:  # a fine-tuned teacher: it must predict the data's labels, in their order
            names = [(tcfg.id2label or {}).get(i) for i in range(tcfg.num_labels)]
            if names != list(data.labels):
                raise ConfigError(f"teacher.model: {cfg.teacher.model} predicts labels {names}, the data has "
                                  f"{list(data.labels)}; fine-tune the teacher on this label set (xdt teacher train)")
    if cfg.data.task != "token" or not cfg.data.langs:
        return
    found = set(data.train.langs) | set(data.dev)
    absent = [lang for lang in cfg.data.langs if lang not in found]
    if absent:
        from xdt.data.discover import discover

        named = {s.lang for s in discover(data_dir, cfg.data.train_split, cfg.data.format)}  # None: file says
        there = f" (it has: {' '.join(sorted(named))})" if None not in named else ""
        raise ConfigError(f"data.langs: {', '.join(absent)} has no {cfg.data.train_split} or {cfg.data.dev_split} "
                          f"data under {data_dir}{there}")
    if evaluate and not cfg.eval.suite:  # the final evaluation scores data.langs on eval.split
        from xdt.eval.data import load_eval_data

        missing = load_eval_data([str(data_dir)], cfg.eval.split, cfg.data.langs, cfg.data.format).missing
        if missing:
            raise ConfigError(f"data.langs: {', '.join(missing)} has no {cfg.eval.split} data under {data_dir}, "
                              "which the run's final evaluation scores (eval.split); drop it from data.langs")


def run_inputs(cfg: RunConfig) -> dict[str, str | None]:
    """What a run reads: `--overwrite` never deletes a run folder that is, holds or lies inside one of them."""
    return {"data.path": cfg.data.path, "data.transfer": cfg.data.transfer, "tokenizer.path": cfg.tokenizer.path,
            "teacher.model": cfg.teacher.model, "student.init_from": cfg.student.init_from,
            "deepspeed.config": cfg.deepspeed.config}


def recorded_config(cfg: RunConfig) -> dict:
    """The config as a run folder records it. A preset's stages follow from distill.* and are recorded as none, as
    before they were expanded when the config is built, so that run folders of that xdt still resume."""
    config = asdict(cfg)
    if cfg.distill.strategy is not None:
        config["stages"] = []
    return config


def start_run(cfg: RunConfig, command: str, overwrite: bool = False):
    """(data folder, tokenizer, task data) of a training command, after everything it reads is checked and its
    output.dir claimed: empty, a run of the same config (to continue), or cleared with `overwrite`."""
    from xdt.engine.distributed import barrier
    from xdt.errors import ConfigError
    from xdt.outputs import check_run_folder, claim_run_folder, run_identity

    if overwrite and cfg.output.resume == "auto":
        raise ConfigError("output.resume: auto continues the run in output.dir, --overwrite starts it over; pass "
                          "one of them")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    init_distributed()
    data_dir, tokenizer, data = prepare(cfg)
    parts = run_parts(cfg, command)
    check_run(cfg, data, data_dir, parts, evaluate=command == "run")
    out, identity = Path(cfg.output.dir), run_identity(recorded_config(cfg))
    extras = [Path(cfg.output.stop_file).name]  # a user may `touch` it before the run starts
    check_run_folder(out, parts, identity, overwrite, run_inputs(cfg), extras)
    if not overwrite:  # checkpoints of this config: continued only with --resume auto, and checked whole now
        from xdt.distill.train import resume_point
        from xdt.engine.checkpoint import Checkpointer

        for part in parts:
            resume_point(Checkpointer(out / "checkpoints" / part), cfg.output.resume)
    barrier()  # every rank has looked before the folder changes
    if is_main():
        claim_run_folder(out, parts, identity, overwrite, extras)
    barrier()
    return data_dir, tokenizer, data


def train_teacher_step(cfg: RunConfig, data, out: Path) -> dict:
    """Fine-tune the teacher, or (resuming) take the one an earlier attempt of this run finished."""
    from xdt.distill.classify import loop_kwargs
    from xdt.distill.teacher_train import train_teacher

    done = out / TEACHER_DONE
    if cfg.output.resume == "auto" and done.exists():
        return json.loads(done.read_text())
    teacher_data = data.for_teacher() if cfg.data.task == "token" else data  # its own tokenizer and windows
    result = train_teacher(cfg, teacher_data, out, task=cfg.data.task, **loop_kwargs(cfg, data))
    summary = {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
               "stopped_early": result.stopped_early}
    if is_main():
        done.write_text(json.dumps(summary))
    return summary


def cache_keys(cfg: RunConfig, data) -> dict:
    """What a teacher cache is keyed by: the student's windows and tokenizer, the teacher's tokenizer (and, where
    it is another, how words are pooled)."""
    from xdt.data.tokenizer import tokenizer_fingerprint
    from xdt.distill.teacher_cache import features_content_id

    keys = {"content_id": features_content_id(data.transfer.features),
            "tokenizer_fp": tokenizer_fingerprint(data.tokenizer), "max_seq_length": cfg.data.max_seq_length}
    if data.cross_tokenizer:
        keys |= {"teacher_tokenizer_fp": tokenizer_fingerprint(data.teacher_tokenizer),
                 "word_pooling": cfg.distill.word_pooling}
    return keys


def cache_step(cfg: RunConfig, data, teacher_dir: Path) -> dict:
    """`xdt teacher cache`: the teacher's outputs on the transfer set, one shard per rank."""
    import numpy as np

    from xdt.distill.teacher_cache import build_teacher_cache
    from xdt.distill.teacher_train import teacher_device_dtype
    from xdt.distill.train import cached_layers
    from xdt.engine.distributed import rank, world_size
    from xdt.errors import ConfigError
    from xdt.models.student import student_shape
    from xdt.models.teacher import load_teacher_model

    if not cfg.distill.teacher_cache:
        raise ConfigError("distill.teacher_cache: set the folder the cache goes to")
    tcfg = _model_config(str(teacher_dir), "teacher.model")
    layers = cached_layers(cfg, student_shape(cfg.student).num_layers, tcfg.num_hidden_layers)
    teacher = load_teacher_model(teacher_dir, data.labels, eager=False)
    dev, dtype = teacher_device_dtype()
    teacher.to(device=dev, dtype=dtype)
    return build_teacher_cache(teacher, data.transfer.features, cfg.distill.teacher_cache, layers=layers,
                               batch_size=cfg.eval.batch_size, teacher_path=teacher_dir, rank=rank(),
                               world=world_size(), dtype=getattr(np, cfg.distill.cache_dtype),
                               pad_id=data.teacher_tokenizer.pad_token_id, progress=is_main(),
                               bridge=data.teacher.bridges["transfer"] if data.cross_tokenizer else None,
                               **cache_keys(cfg, data))


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
    from xdt.distill.teacher_cache import TeacherCache, teacher_weights_hash
    from xdt.distill.teacher_train import teacher_device_dtype
    from xdt.distill.train import cached_layers, check_cross_tokenizer, distill, stage_reads_cache
    from xdt.engine.distributed import world_size
    from xdt.engine.ds_config import build_ds_config
    from xdt.engine.zero3 import build_config, frozen_config, zero3_build
    from xdt.models.student import build_student, count_parameters, student_shape
    from xdt.models.teacher import load_teacher_model

    eager = cfg.distill.attention_loss != "none"
    check_cross_tokenizer(cfg, data)
    tcfg = AutoConfig.from_pretrained(str(teacher_dir))
    cache = None
    if cfg.distill.teacher_cache:
        if not (Path(cfg.distill.teacher_cache) / "manifest.json").exists():
            cache_step(cfg, data, teacher_dir)
        layers = cached_layers(cfg, cfg.student.num_layers, tcfg.num_hidden_layers)
        cache = TeacherCache.open(cfg.distill.teacher_cache, teacher_hash=teacher_weights_hash(teacher_dir),
                                  layers_needed=layers, **cache_keys(cfg, data))
    needs_live = any(s.losses.get(t, 0) > 0 for s in cfg.stages if not stage_reads_cache(s, cache, cfg)
                     for t in TEACHER_TERMS)
    svd = cfg.student.embedding_init in ("svd", "pca") and not cfg.student.init_from
    cut = cfg.student.embedding_init == "teacher" and not cfg.student.init_from
    dev, dtype = teacher_device_dtype()
    # ZeRO-3: teacher and student are built partitioned, under the config distill() trains with (the teacher in
    # its own precision); no rank holds either whole
    student_hidden = AutoConfig.from_pretrained(cfg.student.init_from).hidden_size if cfg.student.init_from else \
        student_shape(cfg.student).hidden_size
    partitioned = build_config(cfg.deepspeed, build_ds_config(cfg.deepspeed, cfg.distill.batch_size, world_size(),
                                                              student_hidden))
    with zero3_build(partitioned and frozen_config(partitioned, dtype)):
        teacher = load_teacher_model(teacher_dir, data.labels, eager, cfg.data.task) if needs_live or \
            cfg.student.embedding_init == "teacher" else None
    word_rows = None  # the teacher's word embeddings, for the student's pieces
    if (svd and teacher is None) or ((svd or cut) and data.cross_tokenizer):
        word_rows = _teacher_word_embeddings(teacher_dir)
        if data.cross_tokenizer:
            from xdt.models.vocab_map import cross_vocab_embeddings

            word_rows = cross_vocab_embeddings(word_rows, data.tokenizer, data.teacher_tokenizer)
    torch.manual_seed(cfg.seed)  # the student's random initialisation is part of what a seed reproduces
    with zero3_build(partitioned):
        student = build_student(cfg.student, vocab_size=len(data.tokenizer), labels=data.labels,
                                task=cfg.data.task, teacher=teacher, copy_layer_map=cfg.distill.layer_map,
                                teacher_word_embeddings=word_rows, pad_token_id=data.tokenizer.pad_token_id,
                                attn_implementation="eager" if eager else None,
                                attention_dropout=0.0 if eager else None)
    sizes = {"teacher_parameters": count_parameters(teacher) if teacher is not None else None,
             "student_parameters": count_parameters(student)}  # full sizes, also when partitioned
    result = distill(cfg, data, teacher, student, out, dev, dtype, cache=cache, teacher_config=tcfg,
                     **loop_kwargs(cfg, data))
    summary = {"path": str(result.path), "best_dev_f1": result.best_dev_f1, "steps": result.steps,
               "history": result.history, "teacher_loaded": teacher is not None, **sizes}
    if is_main():  # written last: what marks the distillation finished (`xdt slurm pipeline` reads it)
        (out / DISTILL_DONE).write_text(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return summary


def evaluate_step(cfg: RunConfig, student_dir: Path, teacher_dir: Path, data_dir: Path, out: Path) -> dict:
    from xdt.eval.options import EvalOptions
    from xdt.eval.run import evaluate

    opts = EvalOptions(model=str(student_dir), teacher=str(teacher_dir), data=[str(data_dir)], out=str(out),
                       suite=cfg.eval.suite, langs=None if cfg.eval.suite else cfg.data.langs,
                       split=cfg.eval.split, format=cfg.data.format, batch_size=cfg.eval.batch_size,
                       max_seq_length=cfg.data.max_seq_length, progress=is_main(),
                       allow_missing=cfg.eval.suite is not None, overwrite=True)  # the run's own eval folder
    return evaluate(opts)


def run(cfg: RunConfig, overwrite: bool = False) -> dict:
    from xdt.eval.report import summary_lines
    from xdt.models.export import export_model

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
