"""Nothing existing is lost (issue 13, item 2): a command writes its folder whole or not at all, refuses a non-empty
--out unless --overwrite, and --overwrite never replaces one of the command's own inputs. Each test fails on the
code before the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.test_deploy import save_tiny
from tests.test_trust_inputs import refused  # one error line, exit 2, no traceback
from xdt.cli import main
from xdt.errors import ConfigError, XdtError

LANGS = "en,ru"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (what "untouched" means)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_siblings(folder: Path) -> list[str]:
    return [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.")]


@pytest.fixture(scope="module")
def mock(tmp_path_factory) -> dict[str, Path]:
    """Mock WikiAnn data (en, ru), its WordPiece vocabulary, two tiny students and a teacher of other labels."""
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    from xdt.config import MockDataConfig
    from xdt.data.mock import write_mock_tokenizer, write_mock_wikiann

    root = tmp_path_factory.mktemp("outputs")
    data = write_mock_wikiann(root / "data", MockDataConfig(langs=["en", "ru"], train_sentences=20,
                                                           dev_sentences=5, test_sentences=20))
    tok = AutoTokenizer.from_pretrained(str(write_mock_tokenizer(root / "tok", data, 300)))
    labels = ["O", "B-X", "I-X"]  # a teacher whose labels do not cover the data's tags
    alien = root / "alien"
    BertForTokenClassification(BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})).save_pretrained(alien)
    tok.save_pretrained(alien)
    return {"root": root, "data": data, "a": save_tiny(root / "a", tok, len(tok), seed=0),
            "b": save_tiny(root / "b", tok, len(tok), seed=1), "alien": alien}


def evaluate(mock, model: str, out: Path, *extra: str, langs: str = LANGS) -> list[str]:
    return ["eval", "--model", str(mock[model]), "--data", str(mock["data"]), "--langs", langs, "--out", str(out),
            "--no-progress", "--no-cache", *extra]


@pytest.fixture
def run_folder(mock, tmp_path) -> Path:
    """What `xdt run` leaves: the best student beside other results."""
    run = tmp_path / "run"
    shutil.copytree(mock["a"], run / "student_best")
    (run / "run.json").write_text("{}")
    return run


# ------------------------------------------------------------------------------------- --overwrite and inputs


@pytest.mark.parametrize("source,out,how", [
    ("{run}", "{run}", "is the input"),  # used to delete the run and leave only the export
    ("{run}/student_best", "{run}", "contains the input"),
    ("{run}", "{run}/student_best/export", "lies inside the input"),
])
def test_export_overwrite_never_replaces_its_input(run_folder, capsys, source, out, how):
    before = snapshot(run_folder)
    refused(capsys, ["export", source.format(run=run_folder), "--out", out.format(run=run_folder), "--overwrite"],
            how, "--overwrite would destroy it")
    assert snapshot(run_folder) == before


def test_export_out_that_is_a_file_is_one_line(run_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("mine")
    refused(capsys, ["export", str(run_folder), "--out", str(tmp_path / "file")], "exists and is not a folder")
    assert (tmp_path / "file").read_text() == "mine"


def test_trim_and_onnx_overwrite_never_replace_their_inputs(mock, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model"
    shutil.copytree(mock["a"], model)
    before = snapshot(model)
    refused(capsys, ["trim", str(model), "--data", str(mock["data"]), "--out", str(model), "--overwrite"],
            "is the input")
    refused(capsys, ["trim", str(model), "--data", str(mock["data"]), "--out", str(mock["data"] / "x"),
                     "--overwrite"], "lies inside the input")
    refused(capsys, ["export", str(model), "--format", "onnx", "--out", str(tmp_path), "--overwrite"],
            "contains the input")
    assert snapshot(model) == before and not (mock["data"] / "x").exists()


# ------------------------------------------------------------------------------------- eval and eval merge


def test_eval_report_is_replaced_whole_or_not_at_all(mock, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(evaluate(mock, "a", out)) == 0
    first = snapshot(out)
    assert {"predictions/en.conll", "predictions/ru.conll", "report.json"} <= set(first)

    refused(capsys, evaluate(mock, "b", out), "exists and is not empty; choose another --out or pass --overwrite")
    # the teacher fails after the student's predictions: they used to be written over the old ones already
    refused(capsys, evaluate(mock, "b", out, "--overwrite", "--teacher", str(mock["alien"])),
            "labels do not cover")
    assert snapshot(out) == first and not hidden_siblings(out)

    # a successful re-evaluation of fewer languages leaves none of the old report's predictions beside it
    assert main(evaluate(mock, "b", out, "--overwrite", langs="en")) == 0
    assert sorted((out / "predictions").iterdir()) == [out / "predictions" / "en.conll"]
    assert json.loads((out / "report.json").read_text())["requested"] == ["en"]
    assert not hidden_siblings(out)


def test_eval_overwrite_refuses_an_out_holding_its_compare_report(mock, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(evaluate(mock, "a", out)) == 0
    before = snapshot(out)
    refused(capsys, evaluate(mock, "b", out, "--overwrite", "--compare", str(out / "report.json")),
            "contains the input")
    assert snapshot(out) == before


def test_merge_never_writes_over_a_shard(mock, tmp_path, capsys):
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        assert main(evaluate(mock, "a", shard, "--shard", f"{i}/2")) == 0
    before = [snapshot(s) for s in shards]
    argv = ["eval", "merge", *map(str, shards), "--out"]
    refused(capsys, [*argv, str(shards[0])], "exists and is not empty")
    refused(capsys, [*argv, str(shards[0]), "--overwrite"], "is the input")  # used to overwrite the shard
    refused(capsys, [*argv, str(shards[1] / "merged"), "--overwrite"], "lies inside the input")
    refused(capsys, [*argv, str(tmp_path), "--overwrite"], "contains the input")
    assert [snapshot(s) for s in shards] == before
    assert main([*argv, str(tmp_path / "merged")]) == 0
    assert {p.name for p in (tmp_path / "merged" / "predictions").iterdir()} == {"en.conll", "ru.conll"}


def test_slurm_eval_refuses_an_out_with_an_earlier_evaluation(mock, tmp_path):
    from xdt.slurm.eval_job import EvalSpec, build_eval_jobs
    from xdt.slurm.render import Resources

    out = tmp_path / "ev"
    spec = EvalSpec(model=str(mock["a"]), data=[str(mock["data"])], out=str(out), shards=2, langs=LANGS)
    jobs = build_eval_jobs(spec, Resources())
    assert f'--out "{out}/report"' in jobs.merge_text  # the merge reads OUT/shards/<i>: it never writes OUT itself
    (out / "shards" / "0").mkdir(parents=True)
    (out / "shards" / "0" / "report.json").write_text("{}")
    with pytest.raises(XdtError, match="shards/ holds an earlier evaluation"):
        build_eval_jobs(spec, Resources())


# ------------------------------------------------------------------------------------- transfer build


def test_transfer_build_is_staged_and_refuses_a_non_empty_out(mock, tmp_path, capsys):
    config = tmp_path / "transfer.yaml"
    source = {"path": str(mock["data"]), "kind": "labeled", "split": "train"}
    config.write_text(json.dumps({"sources": [source], "sampling": {"size": None}}))
    out = tmp_path / "set"
    assert main(["transfer", "build", str(config), "--out", str(out), "-q"]) == 0
    before = snapshot(out)
    refused(capsys, ["transfer", "build", str(config), "--out", str(out), "-q"], "exists and is not empty")
    # a build that fails half way leaves the old set as it was (it used to be built in place)
    bad = tmp_path / "bad.tsv"
    bad.write_text("John\tB-PER\n\nMary\tB-FOO\n", encoding="utf-8")
    config.write_text(json.dumps({"sources": [source, {"path": str(bad), "kind": "labeled", "lang": "en"}]}))
    refused(capsys, ["transfer", "build", str(config), "--out", str(out), "-q", "--overwrite"], "bad.tsv:3")
    assert snapshot(out) == before and not hidden_siblings(out)
    # nor does it leave the folders it would have made
    refused(capsys, ["transfer", "build", str(config), "--out", str(tmp_path / "new" / "deeper" / "set"), "-q"],
            "bad.tsv:3")
    assert not (tmp_path / "new").exists()
    refused(capsys, ["transfer", "build", str(config), "--out", str(tmp_path), "-q", "--overwrite"],
            "contains the input")


# ------------------------------------------------------------------------------------- the staging helper


def test_staged_folder_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    from xdt.outputs import staged_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with staged_folder(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("half way")
    assert snapshot(out) == {"old.txt": b"old"} and not hidden_siblings(out)
    with staged_folder(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # nothing appears before the end
    assert snapshot(out) == {"new.txt": b"new"} and not hidden_siblings(out)


# ------------------------------------------------------------------------------------- training run folders


SMALL = ["data.mock.langs=[en,de]", "data.mock.train_sentences=30", "data.mock.dev_sentences=8",
         "data.mock.test_sentences=8", "tokenizer.mock_vocab_size=400", "teacher.epochs=1", "distill.steps=1"]


def test_a_run_does_not_start_in_a_folder_of_other_files(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(capsys, ["run", f"output.dir={out}", *SMALL], "holds no xdt run", "--overwrite")
    assert snapshot(out) == {"keep.txt": b"mine"}


def test_a_run_does_not_continue_a_run_of_another_config(tmp_path, capsys):
    from xdt.config import load_config
    from xdt.outputs import claim_run_folder, run_identity
    from xdt.recipes.setup import recorded_config

    out = tmp_path / "run"
    other = load_config(QUICKSTART, [f"output.dir={out}", *SMALL, "student.hidden_size=128"])
    claim_run_folder(out, ["teacher", "distill"], run_identity(recorded_config(other)))
    before = snapshot(out)
    # also with --resume auto: resuming after a change of the student's shape is refused by name
    refused(capsys, ["run", str(QUICKSTART), f"output.dir={out}", *SMALL, "--resume", "auto"],
            "holds a teacher run of another config (student.hidden_size: 128 there, 64 now)")
    assert snapshot(out) == before


def test_overwrite_never_deletes_a_run_folder_holding_an_input(tmp_path, capsys):
    out = tmp_path / "run"
    teacher = save_tiny(out / "teacher", *_mock_tokenizer(tmp_path))
    before = snapshot(out)
    refused(capsys, ["distill", str(QUICKSTART), f"output.dir={out}", *SMALL, f"teacher.model={teacher}",
                     "student.num_layers=1", "--overwrite"],
            "output.dir", "contains teacher.model", "--overwrite would delete it")
    assert snapshot(out) == before


def test_a_refused_run_writes_nothing_and_the_corrected_command_runs_in_its_folder(tmp_path, capsys):
    """Issue 23: errors found after `OUTPUT/xdt_run.json` was written (a DeepSpeed file holding "auto", a pickled
    teacher) left the record behind, and the corrected command in the same output.dir was refused until
    --overwrite."""
    import torch
    from safetensors.torch import load_file

    from tests.test_trust_inputs import ONE_STEP, Payload

    teacher = save_tiny(tmp_path / "teacher", *_mock_tokenizer(tmp_path))
    pickled = Path(shutil.copytree(teacher, tmp_path / "pickled"))
    (pickled / "model.safetensors").unlink()
    torch.save({**load_file(teacher / "model.safetensors"), "payload": Payload(tmp_path / "marker")},
               pickled / "pytorch_model.bin")
    auto = tmp_path / "ds.json"
    auto.write_text('{"zero_optimization": {"stage": 2, "allgather_bucket_size": "auto"}}')
    out = tmp_path / "run"
    distill = ["distill", str(QUICKSTART), *SMALL, *ONE_STEP, f"output.dir={out}"]
    refused(capsys, [*distill, f"teacher.model={teacher}", f"deepspeed.config={auto}"],
            'leaves zero_optimization.allgather_bucket_size as "auto"')
    assert not out.exists()
    refused(capsys, [*distill, f"teacher.model={pickled}"], "pytorch_model.bin: pickled weights, refused unopened")
    assert not out.exists() and not (tmp_path / "marker").exists()
    # corrected, in the same folder, no --overwrite (its own process: a finished command ends the process group)
    done = xdt_process([*distill, f"teacher.model={teacher}"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "xdt_run.json").is_file() and (out / "student_best" / "model.safetensors").is_file()


def xdt_process(argv: list[str]):
    """`python -m xdt ARGV` in a process of its own, outside any rendezvous of this pytest process."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return subprocess.run([sys.executable, "-m", "xdt", *argv], capture_output=True, text=True, timeout=900, env=env)


def _mock_tokenizer(tmp_path: Path):
    from transformers import AutoTokenizer

    from xdt.config import load_config
    from xdt.data.mock import materialize_mock

    _, tok_dir = materialize_mock(load_config(None, SMALL))
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return tok, len(tok)


def test_run_folder_rules(tmp_path):
    from xdt.outputs import check_run_folder, claim_run_folder

    ident = {"seed": 1}
    out = tmp_path / "run"
    (out / "slurm" / "logs").mkdir(parents=True)  # written by `xdt slurm submit` before the job starts
    (out / "STOP").touch()
    check_run_folder(out, ["teacher", "distill"], ident, extras=["STOP"])
    claim_run_folder(out, ["teacher"], ident)
    check_run_folder(out, ["teacher"], ident)  # the same config: continued
    check_run_folder(out, ["distill"], {"seed": 2})  # another part (xdt distill after xdt teacher train)
    with pytest.raises(ConfigError, match=r"holds a teacher run of another config \(seed: 1 there, 2 now\)"):
        check_run_folder(out, ["teacher"], {"seed": 2})
    (out / "teacher").mkdir()
    check_run_folder(out, ["teacher"], {"seed": 2}, overwrite=True)
    claim_run_folder(out, ["teacher"], {"seed": 2}, overwrite=True, extras=["STOP"])
    assert sorted(p.name for p in out.iterdir()) == ["STOP", "slurm", "xdt_run.json"]
    assert (out / "slurm" / "logs").is_dir()
    assert json.loads((out / "xdt_run.json").read_text()) == {"teacher": {"seed": 2}}
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="^output.dir: .*file exists and is not a folder"):
        check_run_folder(tmp_path / "file", ["teacher"], ident)
