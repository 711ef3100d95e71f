"""What every training command (`xdt run`, `teacher train`, `teacher cache`, `distill`) does first: its data
(mock or real), every check that would otherwise fail mid-run, and its output.dir claimed as a run folder."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoConfig, BertConfig

from xdt.config import MOCK, RunConfig
from xdt.data.classification import ClassificationBatcher, ClassificationData, load_classification_data
from xdt.data.discover import discover
from xdt.data.mock import materialize_mock, materialize_mock_transfer
from xdt.data.task import load_task_data
from xdt.data.tokenizer import has_tokenizer, load_tokenizer, tokenizer_fingerprint
from xdt.distill.step import cached_layers, check_cross_tokenizer, resume_point
from xdt.distill.teacher_cache import TeacherCache, cache_keys, teacher_weights_hash
from xdt.engine.checkpoint import Checkpointer
from xdt.engine.distributed import barrier, init_distributed, is_main, world_size
from xdt.engine.ds_config import build_ds_config
from xdt.engine.safe_load import check_model_weights
from xdt.errors import ConfigError
from xdt.eval.classify import dev_accuracy
from xdt.eval.data import load_eval_data
from xdt.models.layer_map import resolve_layer_map, teacher_layers_to_copy
from xdt.models.student import student_shape
from xdt.outputs import check_run_folder, claim_run_folder, run_identity


def prepare(cfg: RunConfig):
    """(data folder, tokenizer, task data) for a run: mock data and vocabulary generated when asked."""
    data_dir, tok_dir = materialize_mock(cfg)
    tokenizer = load_tokenizer(tok_dir)
    # a teacher folder with a tokenizer of its own is read with it; where that is not the student's, per word
    teacher_tokenizer = load_tokenizer(cfg.teacher.model) if cfg.teacher.model and has_tokenizer(cfg.teacher.model) \
        else None
    if cfg.data.task == "sequence":
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


def model_config(folder: str, key: str):
    """The config.json of a model folder the run reads, with its weight files checked whole."""
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{key}: cannot read {folder}/config.json: {' '.join(str(err).split())[:200]}") from None
    check_model_weights(folder, key)  # safetensors, whole; a pickled .bin is refused before torch opens it
    return config


def _check_positions(cfg: RunConfig, config, who: str) -> None:
    positions = getattr(config, "max_position_embeddings", None)
    if positions and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2  # their position ids start after the padding index
    if positions and cfg.data.max_seq_length > positions:
        raise ConfigError(f"data.max_seq_length: {cfg.data.max_seq_length} exceeds the {positions} positions of "
                          f"{who}; lower it (longer sentences are split into windows, no word is lost)")


def _check_epochs(cfg: RunConfig, parts: list[str]) -> None:
    """teacher.epochs 0 means "use teacher.model, already fine-tuned, as it is" (`xdt run`, `xdt distill`); a
    command that trains the teacher with it would train one step and go on with an untrained teacher."""
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
    check_cross_tokenizer(cfg, data)
    _check_epochs(cfg, parts)
    pieces = len(data.tokenizer)
    teacher_tokenizer = getattr(data, "teacher_tokenizer", data.tokenizer)  # the folder's own, where it has one
    if cfg.teacher.model:
        tcfg = model_config(cfg.teacher.model, "teacher.model")
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
            scfg = model_config(cfg.student.init_from, "student.init_from")
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
        named = {s.lang for s in discover(data_dir, cfg.data.train_split, cfg.data.format)}  # None: file says
        there = f" (it has: {' '.join(sorted(named))})" if None not in named else ""
        raise ConfigError(f"data.langs: {', '.join(absent)} has no {cfg.data.train_split} or {cfg.data.dev_split} "
                          f"data under {data_dir}{there}")
    if evaluate and not cfg.eval.suite:  # the final evaluation scores data.langs on eval.split

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

        for part in parts:
            resume_point(Checkpointer(out / "checkpoints" / part), cfg.output.resume)
    barrier()  # every rank has looked before the folder changes
    if is_main():
        claim_run_folder(out, parts, identity, overwrite, extras)
    barrier()
    return data_dir, tokenizer, data


def dev_score_fn(cfg: RunConfig, data: ClassificationData):
    """The selection metric of a sequence task as a function of the model: mean per-language dev accuracy, %."""
    return lambda model: dev_accuracy(model, data.dev, len(data.labels), data.tokenizer.pad_token_id,
                                      cfg.eval.batch_size).accuracy


def loop_kwargs(cfg: RunConfig, data) -> dict:
    """What the training loops (`train_teacher`, `distill`) need for `data`: nothing for NER (`TaskData`); for
    sequence classification the batcher and the dev-accuracy score."""
    if not isinstance(data, ClassificationData):
        return {}
    return {"batcher_cls": ClassificationBatcher, "score_fn": dev_score_fn(cfg, data)}
