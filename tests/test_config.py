"""Typed run configs: every shipped YAML parses; every mistake is one error naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from xdt.config import STUDENT_PRESETS, RunConfig, load_config, to_dict
from xdt.errors import ConfigError

SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))


def test_there_are_shipped_configs():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "wikiann41-l6-h256.yaml", "wikiann41-l6-h384.yaml", "wikiann41-l12-h384.yaml"} <= names


def _leaves(node, key=""):
    """(dotted key, value) of every scalar or scalar list in a YAML tree; list items by index (stages.0.lr)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, list) and any(isinstance(v, (dict, list)) for v in node):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{key}.{i}")
    else:
        yield key, node


def _at(tree, key: str):
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config_parses_keeps_each_value_and_round_trips(path: Path, tmp_path):
    if path.parent.name == "transfer":  # transfer-set builds have their own schema
        from xdt.transfer.config import TransferConfig as kind, load_transfer_config as load
    else:
        kind, load = RunConfig, load_config
    cfg = load(path, check=False)  # paper-scale configs name data folders a user provides
    assert isinstance(cfg, kind)
    # every value the file sets is the config's value: none dropped, renamed or coerced to something else
    tree = to_dict(cfg)
    for key, value in _leaves(yaml.safe_load(path.read_text())):
        assert _at(tree, key) == value, f"{path.name}: {key} is {value!r} in the file, {_at(tree, key)!r} loaded"
    # and the config written back as YAML loads to the same config
    again = tmp_path / path.name
    again.write_text(yaml.safe_dump(tree))
    assert load(again, check=False) == cfg


def test_quickstart_passes_every_check():
    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    assert cfg.data.path == "mock" and cfg.student.embedding_size == 32


@pytest.mark.parametrize("name", ["l6-h256", "l6-h384", "l12-h384"])
def test_paper_configs_use_their_preset_shape(name):
    cfg = load_config(ROOT / "configs" / f"wikiann41-{name}.yaml", check=False)
    shape = STUDENT_PRESETS[name]
    assert (cfg.student.num_layers, cfg.student.hidden_size, cfg.student.num_heads,
            cfg.student.intermediate_size) == tuple(shape.values())


def test_dotted_overrides_are_typed():
    cfg = load_config(None, ["student.hidden_size=256", "student.num_heads=4", "data.langs=[de,en]",
                             "distill.temperature=2", "teacher.lr=1e-4", "data.strict=true", "eval.suite=null"])
    assert cfg.student.hidden_size == 256 and cfg.data.langs == ["de", "en"]
    assert cfg.distill.temperature == 2.0 and isinstance(cfg.distill.temperature, float)
    assert cfg.teacher.lr == 1e-4 and cfg.data.strict is True and cfg.eval.suite is None


def test_override_into_list_items():
    cfg = load_config(None, ["distill.strategy=null", "stages=[{name: s1, losses: {hidden: 1.0}}, {name: s2}]",
                             "stages.1.lr=5e-4"])
    assert [s.name for s in cfg.stages] == ["s1", "s2"] and cfg.stages[1].lr == 5e-4
    with pytest.raises(ConfigError, match=r"^stages\.7: expected a list index below 2"):
        load_config(None, ["distill.strategy=null", "stages=[{name: a}, {name: b}]", "stages.7.lr=1"])


@pytest.mark.parametrize("override, message", [
    (["student.hidden_sizee=256"], r"^student\.hidden_sizee: unknown key; expected one of preset, num_layers"),
    (["nonsense=1"], r"^nonsense: unknown key; expected one of seed, threads, data, tokenizer"),
    (["student.hidden_size=abc"], r"^student\.hidden_size: expected int, got str 'abc'"),
    (["student.hidden_size=2.5"], r"^student\.hidden_size: expected int, got float 2\.5"),
    (["data.strict=maybe"], r"^data\.strict: expected bool, got str 'maybe'"),
    (["data.langs=de"], r"^data\.langs: expected list\[str\] or null, got str 'de'"),
    (["distill.strategy=D9"], r"^distill\.strategy: expected one of 'D0-S'"),
    (["data.path=/no/such/folder"], r"^data\.path: path '/no/such/folder' does not exist"),
    (["teacher.model=/no/teacher"], r"^teacher\.model: path '/no/teacher' does not exist"),
    (["student.num_heads=3"], r"^student\.hidden_size: 128 is not divisible by student\.num_heads 3"),
    (["student.embedding_size=512"], r"^student\.embedding_size: expected 1\.\.128"),
    (["student.preset=l6-h384", "student.hidden_size=300"], r"^student\.hidden_size: 300 contradicts student\.preset"),
    (["data.max_seq_length=0"], r"^data\.max_seq_length: expected a positive integer"),
    (["threads=-1"], r"^threads: expected"),
    (["threads=two"], r"^threads: expected"),
    (["seed"], r"'seed': expected an override of the form dotted\.key=value"),
    (["distill.strategy=null"], r"^stages: empty while distill\.strategy is null"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level, got list"):
        load_config(listy)
    nested = tmp_path / "nested.yaml"
    nested.write_text("student: 5\n")
    with pytest.raises(ConfigError, match=r"^student: expected StudentConfig, got int 5"):
        load_config(nested)


def test_preset_fills_shape_and_round_trips():
    cfg = load_config(None, ["student.preset=l12-h384"])
    assert (cfg.student.num_layers, cfg.student.hidden_size) == (12, 384)
    again = load_config(None, [f"student={json.dumps(to_dict(cfg)['student'])}"])
    assert again.student == cfg.student
