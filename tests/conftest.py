"""Shared test setup: offline hubs, a per-session xdt cache, the real data in ../shared/data, the local SLURM cluster,
and the tiny `xdt distill` runs on mock data that the resume, ZeRO-init and multi-node tests compare."""

from __future__ import annotations

import json
import os
import sys
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
    """The local SLURM cluster every SLURM test of the session shares (tests/slurm/cluster.py); its environment."""
    from tests.slurm.cluster import start_cluster

    yield from start_cluster(tmp_path_factory)


# --------------------------------------------------------------------------------------------- tiny runs on mock data
# (tests/recipes/test_resume.py, tests/recipes/test_zero_init.py, tests/slurm/test_multinode.py)

ENV = {**{k: v for k, v in os.environ.items()
          if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
       "TOKENIZERS_PARALLELISM": "false"}
# Dropout off: ranks draw different dropout masks than one process does, which is not what the equality tests.
MOCK_RUN = ["seed=3", "data.path=mock", "data.max_seq_length=32", "data.mock.langs=[en,ru]",
         "data.mock.train_sentences=80", "data.mock.dev_sentences=20", "data.mock.test_sentences=20",
         "tokenizer.mock_vocab_size=600", "student.num_layers=2", "student.hidden_size=16", "student.num_heads=2",
         "student.intermediate_size=32", "student.embedding_size=8", "student.dropout=0",
         "distill.projection_dropout=0", "distill.strategy=D4.2", "distill.batch_size=8", "distill.steps=4",
         "distill.lr=3e-3", "output.tensorboard=false"]
# the resume tests: a checkpoint every step, dropout as shipped (student, projection; the teacher's config has 0.1)
EVERY_STEP = ("output.checkpoint_every=1", "output.keep_last=0", "student.dropout=0.1",
              "distill.projection_dropout=0.1")
TOLERANCE = 1e-4  # 2 ranks vs 1 rank: all-reduce vs accumulation order differs in the last fp32 bits, Adam
# carries that through ~50 steps; measured 3.5e-5 (ZeRO-2) and 0 (ZeRO-3)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Mock data, tokenizer and a tiny teacher saved as an HF folder (labels of the mock data)."""
    from xdt.config import load_config
    from xdt.models.teacher import build_teacher
    from xdt.recipes.setup import prepare

    root = tmp_path_factory.mktemp("resume")
    cfg = load_config(None, [*MOCK_RUN, f"data.cache_dir={root / 'cache'}", "teacher.num_layers=2",
                             "teacher.hidden_size=32", "teacher.num_heads=2", "teacher.intermediate_size=64"])
    _, tokenizer, data = prepare(cfg)
    torch.manual_seed(0)
    teacher = build_teacher(cfg.teacher, vocab_size=len(tokenizer), labels=data.labels)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root


def command(root: Path, out: Path, ranks: int, zero: int, extra: list[str] = (),
            what: str = "distill") -> list[str]:
    """`xdt distill` (what="teacher": `xdt teacher train`, fine-tuning the tiny teacher) on the mock data."""
    subcommand = ["teacher", "train"] if what == "teacher" else ["distill"]
    args = [*subcommand, *MOCK_RUN, f"data.cache_dir={root / 'cache'}", f"teacher.model={root / 'teacher'}",
            f"deepspeed.config=ds_configs/zero{zero}.json", f"output.dir={out}", *extra]
    if ranks == 1:
        return [sys.executable, "-m", "xdt", *args]
    return [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={ranks}", "-m", "xdt", *args]


def curve(out: Path, what: str = "distill") -> list[tuple]:
    records = [json.loads(line) for line in (out / f"{what}.jsonl").read_text().splitlines()]
    return [(r["step"], r.get(f"{what}/loss"), r.get(f"{what}/dev_f1")) for r in records]


def final_weights(out: Path, what: str = "distill") -> dict[str, torch.Tensor]:
    """The last checkpoint consolidated through DeepSpeed's zero_to_fp32 (works for every ZeRO stage)."""
    from xdt.engine.checkpoint import Checkpointer

    root = out / "checkpoints" / what
    return Checkpointer(root).consolidated((root / "latest").read_text().strip())
