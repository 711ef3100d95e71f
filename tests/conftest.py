"""Shared test setup: offline hubs, a per-session xdt cache, and the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MBERT = SHARED_DATA / "vocab" / "bert-base-multilingual-cased"


def need(path: Path) -> Path:
    """`path` under ../shared/data, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"real data not available: {path} is missing (tests read ../shared/data beside the project)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need(SHARED_DATA)


@pytest.fixture(scope="session")
def mbert_tokenizer():
    from xdt.data.tokenizer import load_tokenizer

    return load_tokenizer(need(MBERT))


# Tiny models on a shared 2-core machine: one intra-op thread is many times faster than oversubscribing.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    os.environ["XDT_CACHE"] = str(tmp_path_factory.mktemp("xdt_cache"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The local SLURM cluster every SLURM test of the session shares (tests/slurm_cluster.py); its environment."""
    from tests.slurm_cluster import start_cluster

    yield from start_cluster(tmp_path_factory)
