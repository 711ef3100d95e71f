"""The DeepSpeed config a run hands to deepspeed.initialize: filled from the run, contradictions refused."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from xdt.config import DeepSpeedConfig
from xdt.engine.ds_config import build_ds_config, zero_stage
from xdt.errors import ConfigError


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_shipped_zero_configs_fill_batch_sizes_and_precision(stage):
    ds = build_ds_config(DeepSpeedConfig(config=f"ds_configs/zero{stage}.json", precision="bf16",
                                         gradient_accumulation_steps=2), micro_batch_size=8, world_size=4)
    assert zero_stage(ds) == stage
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["train_batch_size"]) == \
        (8, 2, 64)
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False


def _write(tmp_path, content: dict):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(content))
    return str(path)


def test_batch_sizes_that_do_not_multiply_out(tmp_path):
    path = _write(tmp_path, {"train_batch_size": 100, "zero_optimization": {"stage": 2}})
    with pytest.raises(ConfigError, match=r"sets train_batch_size=100 but the run needs 32 \(micro batch 16 x "
                                          r"accumulation 1 x 2 ranks\)"):
        build_ds_config(DeepSpeedConfig(config=path), 16, 2)


def test_offload_on_stage_0_and_param_offload_below_3(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 0, "offload_optimizer": {"device": "cpu"}}})
    with pytest.raises(ConfigError, match="offloads on ZeRO stage 0"):
        build_ds_config(DeepSpeedConfig(config=path), 4, 1)
    path = _write(tmp_path, {"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})
    with pytest.raises(ConfigError, match="offloads parameters on ZeRO stage 2; only stage 3 can"):
        build_ds_config(DeepSpeedConfig(config=path), 4, 1)


def test_leftover_auto_and_bad_json(tmp_path):
    path = _write(tmp_path, {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}})
    with pytest.raises(ConfigError, match=r'leaves zero_optimization\.reduce_bucket_size as "auto"'):
        build_ds_config(DeepSpeedConfig(config=path), 4, 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        build_ds_config(DeepSpeedConfig(config=str(bad)), 4, 1)
    with pytest.raises(ConfigError, match="'nope.json' does not exist"):
        build_ds_config(DeepSpeedConfig(config="nope.json"), 4, 1)


def test_auto_batch_keys_are_filled(tmp_path):
    path = _write(tmp_path, {"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 1}})
    assert build_ds_config(DeepSpeedConfig(config=path), 4, 1)["train_micro_batch_size_per_gpu"] == 4
    assert (ROOT / "ds_configs" / "zero2.json").exists()


def test_zero3_optimizer_sub_groups_are_bounded_unless_the_file_sets_them(tmp_path):
    """DeepSpeed's default makes a rank's whole partition one sub-group: the optimizer step's temporaries then
    have the partition's size (see build_ds_config)."""
    assert build_ds_config(DeepSpeedConfig(config="ds_configs/zero3.json"), 4, 2, hidden_size=768)[
        "zero_optimization"]["sub_group_size"] == 10_000_000
    path = _write(tmp_path, {"zero_optimization": {"stage": 3, "sub_group_size": 5}})
    assert build_ds_config(DeepSpeedConfig(config=path), 4, 1)["zero_optimization"]["sub_group_size"] == 5
    assert "sub_group_size" not in build_ds_config(DeepSpeedConfig(config="ds_configs/zero2.json"), 4, 1)[
        "zero_optimization"]
