"""Every bad input is one line and exit 2, found before work starts (issue 13, item 4; issue 23): no traceback, no
output folder created (not even the run record), and no check left until after the teacher has trained. Each test
fails on the code before the fix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import MBERT, ROOT, SHARED_DATA, need
from xdt.cli import main
from xdt.errors import XdtError

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
# the quickstart on less mock data: every check below runs before any training
SMALL = ["data.mock.langs=[en,de]", "data.mock.train_sentences=30", "data.mock.dev_sentences=8",
         "data.mock.test_sentences=8", "tokenizer.mock_vocab_size=400", "teacher.epochs=1", "distill.steps=1"]
# one stage of one step: a whole `xdt distill` in a few seconds
ONE_STEP = ["distill.strategy=null", "stages=[{name: s, data: transfer, losses: {logits: 1.0}, steps: 1}]",
            "output.tensorboard=false"]


class Payload:
    """Unpickling it creates `marker`: what a pickled weights file carrying code does when torch opens it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def refused(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    # one error line, last, and no traceback (progress bars of a model loaded before may precede it)
    lines = capsys.readouterr().err.strip().splitlines()
    err = lines[-1]
    assert err.startswith("xdt: error: ") and sum("xdt: error:" in line for line in lines) == 1, lines
    assert not any("Traceback" in line for line in lines), lines
    for needle in needles:
        assert needle in err, err
    return err


def cut(path: Path, keep: float = 0.5) -> None:
    """Truncate a file, as a full disk or an interrupted copy leaves it."""
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * keep))


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """A tiny random teacher on the small mock data (labels and vocabulary of the run), and copies of it with a
    truncated and an empty weights file, one with only 128 positions, and one whose weights are a pickle that runs
    code when opened (`pickled`; it would create `marker`)."""
    import torch

    from xdt.config import load_config
    from xdt.models.teacher import build_teacher
    from xdt.recipes.setup import prepare

    root = tmp_path_factory.mktemp("inputs")
    cfg = load_config(QUICKSTART, [*SMALL, "teacher.num_layers=2", "teacher.hidden_size=32", "teacher.num_heads=2",
                                   "teacher.intermediate_size=64"])
    _, tokenizer, data = prepare(cfg)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, vocab_size=len(tokenizer), labels=data.labels)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    for name in ("truncated", "empty", "short"):
        shutil.copytree(root / "teacher", root / name)
    cut(root / "truncated" / "model.safetensors")
    (root / "empty" / "model.safetensors").write_bytes(b"")
    config = json.loads((root / "short" / "config.json").read_text())
    (root / "short" / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128}))
    shutil.copytree(root / "teacher", root / "pickled")
    (root / "pickled" / "model.safetensors").unlink()
    torch.save({**teacher.state_dict(), "payload": Payload(root / "marker")}, root / "pickled" / "pytorch_model.bin")
    return {"root": root, "teacher": root / "teacher", "truncated": root / "truncated", "empty": root / "empty",
            "short": root / "short", "pickled": root / "pickled", "marker": root / "marker"}


def distill_argv(work, out: Path, *extra: str) -> list[str]:
    return ["distill", QUICKSTART, *SMALL, *ONE_STEP, f"teacher.model={work['teacher']}", f"output.dir={out}", *extra]


@pytest.fixture(scope="module")
def finished(work) -> Path:
    """A whole `xdt distill` run folder (student_best, a complete DeepSpeed checkpoint)."""
    out = work["root"] / "finished"
    assert main(distill_argv(work, out)) == 0
    return out


@pytest.fixture(scope="module")
def stopped(work) -> Path:
    """A run stopped after its first step by the stop file: a mid-step checkpoint that a resume loads in full."""
    out = work["root"] / "stopped"
    out.mkdir()
    (out / "STOP").touch()
    assert main(distill_argv(work, out, "stages.0.steps=3")) == 75
    (out / "STOP").unlink()
    return out


# ------------------------------------------------------------------------------------- config values


@pytest.mark.parametrize("overrides,expected", [
    (["distill.lr=-1"], "distill.lr: expected a positive number, got -1.0"),  # torch: ValueError mid-run
    (["teacher.lr=-1e-3"], "teacher.lr: expected a positive number"),
    (["distill.strategy=null", "stages=[{name: s, losses: {logits: 1.0}, lr: -1}]"], "stages.0.lr: expected a positive"),
    (["teacher.batch_size=0"], "teacher.batch_size: expected a positive integer, got 0"),  # ZeroDivisionError
    (["teacher.dropout=1.5"], "teacher.dropout: expected a number in [0, 1)"),
    (["distill.lr=.nan"], "distill.lr: expected a positive number, got nan"),
    (["data.path="], "data.path: empty path"),  # used to read the working directory
    (["data.transfer="], "data.transfer: empty path"),
    (["output.dir="], "output.dir: empty"),
])
def test_bad_config_values_are_one_line_before_anything(tmp_path, capsys, overrides, expected):
    out = tmp_path / "run"
    refused(capsys, ["run", QUICKSTART, f"output.dir={out}", *overrides], expected)
    assert not out.exists()


@pytest.mark.parametrize("content,expected", [
    ("[1, 2]", "holds a JSON list; expected an object"),  # TypeError deep in the run
    ('{"zero_optimization": {"stage": "2"}}', "zero_optimization.stage is '2'; expected the integer 0, 1, 2 or 3"),
    ('{"zero_optimization": {"stage": "two"}}', "zero_optimization.stage is 'two'"),  # pydantic's traceback
    ('{"zero_optimization": [2]}', "zero_optimization is a list; expected an object"),
    # found by the engine's fill after the run record was written: the corrected command was refused (issue 23)
    ('{"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}',
     'leaves zero_optimization.reduce_bucket_size as "auto"'),
    ('{"train_micro_batch_size_per_gpu": 3}', "sets train_micro_batch_size_per_gpu=3 but the run needs 32"),
])
def test_bad_deepspeed_files_are_one_line_before_anything(tmp_path, capsys, content, expected):
    ds = tmp_path / "ds.json"
    ds.write_text(content)
    refused(capsys, ["run", QUICKSTART, f"output.dir={tmp_path / 'run'}", f"deepspeed.config={ds}"],
            "deepspeed.config:", expected)
    assert not (tmp_path / "run").exists()


def test_overrides_after_resume_are_overrides(tmp_path, capsys):
    # argparse used to stop at --resume: "unrecognized arguments: output.dir=..."
    refused(capsys, ["run", QUICKSTART, "--resume", "auto", f"output.dir={tmp_path / 'run'}", "distill.lr=-1"],
            "distill.lr: expected a positive number")
    with pytest.raises(SystemExit) as done:  # anything else after an option is still argparse's usage error
        main(["run", QUICKSTART, "--resume", "auto", "--what", "x=1"])
    assert done.value.code == 2 and "unrecognized arguments: --what x=1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- the whole run, up front


@pytest.mark.parametrize("command,overrides,expected", [
    # found after the teacher had trained (4.5 minutes on the real quickstart)
    ("run", ["student.num_layers=4"], "distill.layer_map: 'top' needs at most as many student layers (4)"),
    # found at the final evaluation, with a hint naming --allow-missing, which `xdt run` does not have
    ("run", ["data.langs=[en,xx]"], "data.langs: xx has no train or dev data under"),
    # IndexError in the embeddings on the first long sentence
    ("run", ["data.max_seq_length=1000"], "data.max_seq_length: 1000 exceeds the 512 positions of the teacher"),
    ("distill", ["teacher.model={short}", "data.max_seq_length=200"], "exceeds the 128 positions of teacher.model"),
    # safetensors' traceback after the data was aligned
    ("distill", ["teacher.model={truncated}"], "model.safetensors: not a complete safetensors file"),
    ("distill", ["teacher.model={empty}"], "model.safetensors: not a complete safetensors file"),
    ("run", ["output.dir={file}"], "output.dir: {file} exists and is not a folder"),  # FileExistsError
    # issue 23: a tokenizer larger than the teacher's embedding table (refused after the run record was written):
    # the folder's own tokenizer, the student's here, or tokenizer.path's where the folder has none
    ("distill", ["teacher.model={teacher}", "tokenizer.path={mbert}"],
     "teacher.model: {teacher} has 4000 word embeddings, fewer than the 119547 pieces of the tokenizer"),
    ("teacher", ["teacher.model={teacher}", "tokenizer.path={mbert}"], "fewer than the 119547 pieces"),
    ("distill", ["teacher.model={bare}", "tokenizer.path={mbert}"],
     "teacher.model: {bare} has 4000 word embeddings, fewer than the 119547 pieces of the tokenizer (tokenizer.path"),
    # pickled weights: torch's unpickling traceback, after the run record was written
    ("distill", ["teacher.model={pickled}"], "teacher.model: {pickled}/pytorch_model.bin: pickled weights, refused"),
    ("teacher", ["teacher.model={pickled}"], "{pickled}/pytorch_model.bin: pickled weights, refused unopened"),
    # no training at all: one step per phase, exit 0 and an untrained student
    ("run", ["distill.epochs=0", "distill.steps=0"], "distill.epochs: 0 trains no stage of strategy D4.2"),
    ("distill", [*ONE_STEP, "teacher.model={teacher}", "stages.0.steps=0", "stages.0.epochs=0"],
     "stages.0.epochs: 0 trains nothing in stage 's'"),
    ("run", ["teacher.epochs=0"], "teacher.epochs: 0 trains no teacher, and teacher.model is empty"),
    ("teacher", ["teacher.model={teacher}", "teacher.epochs=0"], "teacher.epochs: 0 trains nothing in `xdt teacher"),
    # teacher.epochs 0 with a teacher.model keeps its meaning (use it as it is): the next check is the one refusing
    ("run", ["teacher.model={teacher}", "teacher.epochs=0", "data.langs=[en,xx]"], "data.langs: xx has no train"),
    # empty language lists: data.langs [] trained on every language
    ("run", ["data.langs=[]"], "data.langs: empty list; expected language codes"),
    ("run", ["data.mock.langs=[]"], "data.mock.langs: empty list; expected language codes"),
])
def test_the_whole_run_is_checked_before_its_folder_is_made(work, tmp_path, capsys, command, overrides, expected):
    (tmp_path / "file").write_text("mine")
    paths = {k: work[k] for k in ("teacher", "truncated", "empty", "short", "pickled")} | {"file": tmp_path / "file"}
    if "{mbert}" in " ".join(overrides):
        paths["mbert"] = need(MBERT)
        # the teacher of 4000 rows: the mock vocabulary is smaller, a random BERT of the mock shape is not; its
        # folder holds the whole mBERT tokenizer (the case), the bare copy no tokenizer at all
        paths["teacher"] = _resized(work["teacher"], tmp_path / "teacher", 4000, tokenizer=MBERT)
        paths["bare"] = _resized(work["teacher"], tmp_path / "bare", 4000, tokenizer=None)
    out = tmp_path / "run"

    def fill(text: str) -> str:  # str.format would read ONE_STEP's YAML braces as fields
        for key, path in paths.items():
            text = text.replace(f"{{{key}}}", str(path))
        return text

    argv = [*("teacher train".split() if command == "teacher" else [command]), QUICKSTART, *SMALL,
            f"output.dir={out}", *map(fill, overrides)]
    refused(capsys, argv, fill(expected))
    assert not out.exists() and (tmp_path / "file").read_text() == "mine"
    assert not work["marker"].exists()  # nothing of the pickle ran


def _resized(model: Path, out: Path, rows: int, tokenizer: Path | None | str = "own") -> Path:
    """A copy of the model folder `model` with `rows` word-embedding rows and its own tokenizer, the one in folder
    `tokenizer`, or none."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    resized = AutoModelForTokenClassification.from_pretrained(str(model))
    resized.resize_token_embeddings(rows)
    resized.save_pretrained(out)
    if tokenizer is not None:
        AutoTokenizer.from_pretrained(str(model if tokenizer == "own" else tokenizer)).save_pretrained(out)
    return out


@pytest.mark.parametrize("command", ["eval", "export", "trim"])
def test_a_tokenizer_larger_than_the_embedding_table_is_one_line(work, tmp_path, capsys, command):
    """The issue's case: a folder whose tokenizer is the whole mBERT vocabulary, its model 4000 rows (an IndexError
    traceback in eval and export; trim refused it already)."""
    from transformers import AutoTokenizer

    rows = _resized(work["teacher"], tmp_path / "rows", 4000)
    big = Path(shutil.copytree(rows, tmp_path / "big"))
    AutoTokenizer.from_pretrained(str(need(MBERT))).save_pretrained(big)
    data = str(need(SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv"))
    out = tmp_path / "out"
    argv = {"eval": ["eval", "--model", str(big), "--data", data, "--out", str(out), "--no-progress"],
            "export": ["export", str(rows), "--tokenizer", str(MBERT), "--out", str(out)],
            "trim": ["trim", str(big), "--data", data, "--out", str(out)]}[command]
    needle = {"trim": "beyond the model's 4000 embedding rows"}.get(
        command, "the tokenizer has 119547 pieces, more than the 4000 rows of")
    refused(capsys, argv, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv", [
    ["data", "inspect", "{loop}"],  # "not found"
    ["eval", "--model", "{teacher}", "--data", "{loop}", "--out", "{out}"],  # RuntimeError from the "given twice" check
    ["eval", "--model", "{loop}", "--data", "{data}", "--out", "{out}"],
    ["eval", "--model", "{teacher}", "--data", "{data}", "--out", "{loop}"],
    ["eval", "merge", "{loop}", "--out", "{out}"],
    ["trim", "{teacher}", "--data", "{loop}", "--out", "{out}"],  # "not found"
    ["export", "{loop}", "--out", "{out}"],
    ["transfer", "stats", "{loop}"],
    ["run", "{loop}"],
    ["run", QUICKSTART, "data.path={loop}", "output.dir={out}"],
    ["run", QUICKSTART, "tokenizer.path={loop}", "output.dir={out}"],
    ["run", QUICKSTART, "output.dir={loop}"],
])
def test_a_symlink_loop_is_named_in_every_command(work, tmp_path, capsys, argv):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    paths = {"loop": loop, "out": tmp_path / "out", "teacher": work["teacher"],
             "data": need(SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv")}
    err = refused(capsys, [a.format(**paths) for a in argv], f"{loop}", "a symlink loop")
    assert "not found" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loop"]


@pytest.mark.parametrize("argv,expected", [
    (["--shard", "-1/2"], "--shard '-1/2': expected 0 <= i < n"),  # argparse: "expected one argument"
    (["--langs", ""], "--langs '': expected comma-separated language codes"),  # scored every language
])
def test_eval_options_out_of_range_are_one_line(work, tmp_path, capsys, argv, expected):
    data = str(need(SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv"))
    refused(capsys, ["eval", "--model", str(work["teacher"]), "--data", data, "--out", str(tmp_path / "out"),
                     "--no-progress", *argv], expected)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- checkpoints and caches


def test_resume_from_a_truncated_checkpoint_is_one_line(work, stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    tag = (out / "checkpoints" / "distill" / "latest").read_text().strip()
    cut(out / "checkpoints" / "distill" / tag / "mp_rank_00_model_states.pt")
    refused(capsys, distill_argv(work, out, "stages.0.steps=3", "--resume", "auto"),
            "mp_rank_00_model_states.pt: truncated or damaged checkpoint file", "delete that checkpoint folder")


def test_resume_after_changing_the_students_shape_is_one_line(work, stopped, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    argv = distill_argv(work, out, "stages.0.steps=3", "student.hidden_size=128", "--resume", "auto")
    refused(capsys, argv, "holds a distill run of another config (student.hidden_size: 64 there, 128 now)")
    # a run folder of an older xdt (no record of its config): DeepSpeed's size mismatch, in one line
    (out / "xdt_run.json").unlink()
    refused(capsys, argv, "does not load into this run's model (size mismatch for student.", "--overwrite")


def test_export_of_a_truncated_deepspeed_checkpoint_is_one_line(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    root = run / "checkpoints" / "distill"
    cut(root / (root / "latest").read_text().strip() / "mp_rank_00_model_states.pt")
    refused(capsys, ["export", str(root), "--out", str(tmp_path / "out")], "truncated or damaged checkpoint file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["export", "eval", "trim"])
def test_a_truncated_model_is_one_line_in_every_command(work, tmp_path, capsys, command):
    model, out = str(work["truncated"]), str(tmp_path / "out")
    data = str(need(SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv"))
    argv = {"export": ["export", model, "--out", out],
            "eval": ["eval", "--model", model, "--data", data, "--out", out, "--no-progress"],
            "trim": ["trim", model, "--data", data, "--out", out]}[command]
    refused(capsys, argv, "model.safetensors: not a complete safetensors file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("array", ["windows", "offsets", "logits", "hidden-01"])
def test_a_truncated_teacher_cache_array_is_one_line(work, tmp_path, array):
    import numpy as np

    from xdt.config import load_config
    from xdt.distill.teacher_cache import TeacherCache, build_teacher_cache
    from xdt.models.teacher import load_teacher_model
    from xdt.recipes.setup import prepare

    cfg = load_config(QUICKSTART, SMALL)
    _, tokenizer, data = prepare(cfg)
    teacher = load_teacher_model(work["teacher"], data.labels, eager=False)
    keys = {"content_id": "c", "tokenizer_fp": "t", "max_seq_length": 64}
    build_teacher_cache(teacher, data.transfer.features, tmp_path / "cache", layers=[1], batch_size=64,
                        teacher_path=None, dtype=np.float16, progress=False, **keys)
    shard = next((tmp_path / "cache").glob("shard-*"))
    cut(shard / f"{array}.npy", 0.6)
    with pytest.raises(XdtError, match=f"{array}.npy: not a teacher-cache array|{shard}: shard arrays do not match"):
        TeacherCache.open(tmp_path / "cache", teacher_hash=None, layers_needed=[1], **keys)


def test_teacher_cache_never_builds_into_a_folder_of_other_files(work, tmp_path, capsys):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "keep.txt").write_text("mine")
    refused(capsys, ["teacher", "cache", QUICKSTART, *SMALL, f"teacher.model={work['teacher']}",
                     f"distill.teacher_cache={tmp_path / 'cache'}"], "holds files that are not a teacher cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["keep.txt"]


# ------------------------------------------------------------------------------------- data files


def test_cr_only_line_endings_read_as_line_ends(tmp_path):
    from xdt.data.discover import discover, read_source
    from xdt.data.readers import ReadOptions, ReadReport

    lf = need(SHARED_DATA / "wikiann" / "xtreme" / "test-af.tsv")
    lines = lf.read_bytes().split(b"\n")[:200]
    (tmp_path / "lf").mkdir()
    (tmp_path / "cr").mkdir()
    (tmp_path / "lf" / "test-af.tsv").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "cr" / "test-af.tsv").write_bytes(b"\r".join(lines) + b"\r")  # was "more than two fields" at line 1

    def read(folder: Path) -> list:
        return [s for src in discover(folder, "test") for s in read_source(src, ReadOptions(), ReadReport())]

    assert read(tmp_path / "cr") == read(tmp_path / "lf") and len(read(tmp_path / "lf")) > 10


def test_a_fault_in_a_cr_only_xtremedistil_file_names_its_line(tmp_path, capsys):
    text = "John lives here\tB-PER O O\rMary is here\tB-PER O O\rBob went to Paris\tB-PER O O\r"
    (tmp_path / "train.tsv").write_text(text, newline="")
    # the whole file used to be line 1: "3 tokens but 17 tags"
    refused(capsys, ["data", "inspect", str(tmp_path / "train.tsv"), "--strict"], "train.tsv:3: 4 tokens but 3 tags")


def test_transfer_stats_on_a_binary_file_is_one_line(tmp_path, capsys):
    binary = tmp_path / "set.jsonl"
    binary.write_bytes(b'{"lang": "en", "words": ["a"]}\nPK\x03\x04\xff\xfe\x00binary\n')  # was UnicodeDecodeError
    refused(capsys, ["transfer", "stats", str(binary)], "set.jsonl:2: not UTF-8 text")
