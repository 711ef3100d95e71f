"""Loads run no code from a file, and per-rank RNG files restore every stream exactly (fast units; the real
checkpoints, resumes and exports are in test_resume.py)."""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import pytest
import torch

from xdt.engine.checkpoint import MARKER, Checkpointer, load_rng, rng_file, rng_state, save_rng, set_rng_state
from xdt.engine.safe_load import UnsafeCheckpoint, safe_torch_load, weights_only_loads
from xdt.errors import XdtError


class Payload:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_torch_load_inside_the_block_refuses_pickled_code_naming_the_file(tmp_path):
    path = tmp_path / "model_states.pt"
    torch.save({"module": {"w": torch.ones(2)}, "payload": Payload(tmp_path / "ran")}, path)
    original = torch.load
    with weights_only_loads():
        assert torch.load is not original
        with pytest.raises(UnsafeCheckpoint) as err:
            torch.load(str(path), map_location="cpu", weights_only=False)  # what DeepSpeed passes
    assert torch.load is original
    message = str(err.value)
    assert message.startswith(f"{path}: refusing to load") and "\n" not in message and "weights_only=True" in message
    assert not (tmp_path / "ran").exists()


def test_deepspeed_state_classes_and_plain_tensors_load(tmp_path):
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0), "x": torch.arange(3),
                "legacy_rng": np.random.get_state()}, path)
    state = safe_torch_load(path)
    assert state["zero_stage"] == ZeroStageEnum.gradients and torch.equal(state["x"], torch.arange(3))
    assert isinstance(state["legacy_rng"][1], np.ndarray)


def _draws():
    return (torch.rand(4).tolist(), np.random.standard_normal(3).tolist(), random.random(), random.gauss(0, 1))


def test_rng_file_restores_torch_numpy_and_python_streams(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.standard_normal(), random.gauss(0, 1)  # cached Gaussians are part of the state
    save_rng(tmp_path / "rng.safetensors", rng_state(), 1, 2)
    expected = _draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    state, meta = load_rng(tmp_path / "rng.safetensors")
    set_rng_state(state)
    assert _draws() == expected and (meta["rank"], meta["world_size"]) == ("1", "2")


def test_rng_states_of_another_world_size_are_refused(tmp_path):
    tag = tmp_path / "s0-p0-step1"
    tag.mkdir()
    (tag / MARKER).write_text(json.dumps({"global_step": 1}))
    for r in (0, 1):
        save_rng(rng_file(tag, r), rng_state(), r, 2)
    with pytest.raises(XdtError, match=r"RNG states of 2 rank\(s\).* this run has 1: resume it with 2 rank"):
        Checkpointer(tmp_path).load(None, tag.name)  # refused before DeepSpeed reads anything
