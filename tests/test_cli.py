"""The `xdt` console script: help, `data inspect` against dataset_infos.json, exit code 2 on bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MBERT, SHARED_DATA, need
from xdt.cli import main

XDT = shutil.which("xdt") or f"{sys.executable} -m xdt"


def run_xdt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*XDT.split(), *args], capture_output=True, text=True, timeout=300)


COMMANDS = ["data", "run", "teacher", "distill", "export", "eval", "transfer", "slurm"]


def test_help_lists_every_command():
    proc = run_xdt("--help")
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout


@pytest.mark.data
@pytest.mark.parametrize("layout", ["xtreme", "raw"])
def test_inspect_json_sentence_counts_equal_dataset_infos(layout):
    """The issue's acceptance check, through the installed console script."""
    infos = json.loads(need(SHARED_DATA / "wikiann" / "dataset_infos.json").read_text())
    proc = run_xdt("data", "inspect", str(need(SHARED_DATA / "wikiann" / layout)), "--split", "test", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    langs = result["languages"]
    assert len(langs) == (26 if layout == "xtreme" else 4)
    for lang, stats in langs.items():
        assert stats["sentences"] == infos[lang]["splits"]["test"]["num_examples"], lang
        assert stats["words"] > stats["sentences"]
        assert set(stats["tags"]) == {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"}
        assert stats["entities"] == stats["tags"]["B-PER"] + stats["tags"]["B-ORG"] + stats["tags"]["B-LOC"]


@pytest.mark.data
def test_inspect_with_tokenizer_reports_alignment(capsys):
    path = need(SHARED_DATA / "wikiann" / "xtreme")
    assert main(["data", "inspect", str(path), "--split", "dev", "--langs", "tl,ms", "--tokenizer",
                 str(need(MBERT)), "--max-seq-length", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["languages"]) == ["ms", "tl"]
    for stats in result["languages"].values():
        assert stats["aligned_words"] == stats["words"]
        assert stats["windows"] >= stats["sentences"]
        assert set(stats["subword_length"]) == {"p50", "p90", "p95", "p99", "max", "mean"}
        assert stats["subword_length"]["p50"] <= stats["subword_length"]["p99"] <= stats["subword_length"]["max"]
    assert result["max_seq_length"] == 32


@pytest.mark.data
def test_inspect_table_reports_skipped_lines(capsys):
    path = need(SHARED_DATA / "wikiann" / "samples" / "xtremedistil_small")
    assert main(["data", "inspect", str(path), "--split", "train"]) == 0
    out = capsys.readouterr().out
    # whitespace runs (`Prizes  The`) leave fewer tokens than tags: those lines are reported, not mis-aligned
    assert "skipped 4 malformed line(s):" in out and "train_small.tsv:36: 6 tokens but 7 tags" in out


def test_bad_input_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "test-en.tsv"
    bad.write_bytes(b"Paris\tB-LOC\nis O\n")
    proc = run_xdt("data", "inspect", str(tmp_path), "--split", "test")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"xdt: error: {bad}:2: line has no tab; expected token<TAB>tag"]
    assert proc.stdout == ""


def test_unknown_split_and_flag_misuse_exit_2(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path), "--split", "holdout"]) == 2
    assert "unknown split 'holdout'" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path), "--max-seq-length", "32"]) == 2
    assert "--max-seq-length needs --tokenizer" in capsys.readouterr().err
    assert main(["data", "inspect", str(tmp_path), "--tokenizer", str(tmp_path)]) == 2
    assert "no tokenizer files" in capsys.readouterr().err


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    assert "usage: xdt" in capsys.readouterr().out


def test_config_errors_exit_2_before_any_work(tmp_path, capsys):
    assert main(["run", "student.hidden_sizee=3", f"output.dir={tmp_path}"]) == 2
    assert "student.hidden_sizee: unknown key" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_export_refuses_a_non_empty_out_and_a_folder_without_a_model(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "out: exists and is not empty; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "new")]) == 2
    assert "no HF model folder here" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command,options", [("eval", "xdt.eval.options:EvalOptions"),
                                             ("export", "xdt.deploy.options:ExportOptions"),
                                             ("trim", "xdt.deploy.options:TrimOptions")])
def test_every_option_field_is_one_flag_and_comes_back_parsed(command, options):
    """A field of the option dataclass is the whole declaration: its flag, help and parser reach argparse, and the
    parsed command line comes back as the dataclass, each text read by the field's own parser."""
    import dataclasses
    import importlib

    from xdt.cli import build_parser
    from xdt.options import flag_fields, options_from

    module, _, name = options.partition(":")
    cls = getattr(importlib.import_module(module), name)
    samples = {"langs": ("de,en", ["de", "en"]), "shard": ("1/4", (1, 4))}
    argv, positional, expected = [command], [], {}
    for f in flag_fields(cls):
        m = f.metadata
        assert m["help"], f"{name}.{f.name}: no help text"
        flag = m["flag"] or "--" + f.name.replace("_", "-")
        if m["switch"]:
            argv.append(flag)
            expected[f.name] = not f.default
            continue
        text, value = samples.get(f.name, (m["choices"][-1], m["choices"][-1]) if m["choices"] else
                                  {int: ("3", 3), float: ("0.5", 0.5)}.get(m["type"], (f"v-{f.name}", f"v-{f.name}")))
        if m["positional"]:
            positional.append(text)
        elif m["repeat"]:
            argv += [flag, text, flag, text + "2"]
            value = [value, value + "2"]
        else:
            argv += [flag, text]
        expected[f.name] = value
    args = build_parser().parse_args(argv + positional)
    opts = options_from(cls, args)
    assert {k: getattr(opts, k) for k in expected} == expected
    assert len(expected) == len(dataclasses.fields(cls))  # every field is a flag
