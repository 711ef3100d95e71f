"""End to end: the quickstart (`xdt run`), and a real-data run whose exported student predicts the same through
`pipeline("token-classification")` as through `xdt eval`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MBERT, SHARED_DATA, need

XDT = shutil.which("xdt") or f"{sys.executable} -m xdt"


@pytest.mark.slow
def test_quickstart_runs_offline_and_prints_the_per_language_table(tmp_path):
    # not the rendezvous of this pytest process (earlier tests initialised torch.distributed in it)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    proc = subprocess.run([*XDT.split(), "run", f"output.dir={tmp_path / 'run'}", f"data.cache_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for lang in ("en", "de", "ru", "ar", "hi"):
        assert any(line.strip().startswith(f"{lang}  F1") for line in lines), proc.stdout
    assert any(line.startswith("mean F1") for line in lines)
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert set(report["languages"]) == {"en", "de", "ru", "ar", "hi"}
    assert summary["mean_f1"] == report["mean_f1"]
    # the mock data is learnable and the student keeps most of the teacher
    assert report["teacher"]["mean_f1"] > 50
    assert report["mean_f1"] > 0.7 * report["teacher"]["mean_f1"]
    for name in ("report.md", "per_language.csv", "f1_per_language.png"):
        assert (tmp_path / "run" / "eval" / name).exists()


@pytest.mark.slow
@pytest.mark.data
def test_real_data_d42_student_exports_and_pipeline_agrees_with_xdt_eval(tmp_path):
    from transformers import pipeline

    from xdt.config import load_config
    from xdt.eval.report import read_predictions
    from xdt.recipes.run import run

    langs = ["af", "hi", "tl"]
    cfg = load_config(None, [
        f"data.path={need(SHARED_DATA / 'wikiann' / 'xtreme')}", f"data.langs=[{','.join(langs)}]",
        "data.limit=400", "data.max_seq_length=64", f"tokenizer.path={need(MBERT)}", f"data.cache_dir={tmp_path}",
        "teacher.num_layers=2", "teacher.hidden_size=64", "teacher.num_heads=2", "teacher.intermediate_size=128",
        "teacher.epochs=3", "teacher.lr=5e-3", "student.num_layers=1", "student.hidden_size=32",
        "student.num_heads=2", "student.intermediate_size=64", "student.embedding_size=16",
        "distill.strategy=D4.2", "distill.steps=15", "distill.lr=5e-3", "distill.schedule=constant",
        f"output.dir={tmp_path / 'run'}", "output.tensorboard=false",
    ])
    summary = run(cfg)
    report = json.loads((tmp_path / "run" / "eval" / "report.json").read_text())
    assert list(report["languages"]) == langs and report["missing"] == []
    # both models learn WikiAnn at this size: measured teacher test F1 31.4 (dev 32.1), student 26.0; at the rates
    # this test had before (teacher 1e-3, student 2e-3 decaying) 12.9 and 13.6, and a run that learns nothing 0
    teacher, student = report["teacher"]["mean_f1"], report["mean_f1"]
    assert summary["teacher"]["best_dev_f1"] > 20 and teacher > 20, f"teacher test F1 {teacher:.2f}"
    assert student > 15 and student > 0.5 * teacher, f"student test F1 {student:.2f} (teacher {teacher:.2f})"

    student = tmp_path / "run" / "student"
    tagger = pipeline("token-classification", model=str(student), tokenizer=str(student), ignore_labels=[],
                      device="cpu")
    compared = 0
    for lang in langs:
        words, gold, pred = read_predictions(tmp_path / "run" / "eval" / "predictions" / f"{lang}.conll")
        for sent_words, sent_pred in list(zip(words, pred))[:60]:
            text = " ".join(sent_words)
            if len(tagger.tokenizer(text)["input_ids"]) > cfg.data.max_seq_length:
                continue  # xdt windows long sentences; the pipeline would see them whole
            starts, pos = [], 0
            for w in sent_words:
                starts.append(text.index(w, pos))
                pos = starts[-1] + len(w)
            by_start = {}
            for token in tagger(text):
                by_start.setdefault(token["start"], token["entity"])
            assert [by_start[s] for s in starts] == sent_pred, (lang, text)
            compared += 1
    assert compared > 100


def test_a_second_engine_in_the_same_process_after_shutdown():
    """Commands run in-process one after another (the tests, a notebook): `shutdown` destroys the process group, and
    DeepSpeed's cached clone of the world group must go with it, or the next engine fails 'Group ... is not
    registered' when it broadcasts the model."""
    import deepspeed
    import torch

    from xdt.engine.distributed import init_distributed, shutdown

    for _ in range(2):
        init_distributed()
        engine, *_ = deepspeed.initialize(model=torch.nn.Linear(2, 2), config={
            "train_micro_batch_size_per_gpu": 1, "optimizer": {"type": "SGD", "params": {"lr": 0.1}}})
        assert engine.global_rank == 0
        shutdown()
    assert not torch.distributed.is_initialized()
