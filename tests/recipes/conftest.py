"""The mock task of the recipe tests: tiny shapes and the aligned mock data (tests/recipes/test_distill.py,
test_training.py, test_training_modes.py)."""

from __future__ import annotations

import pytest

from xdt.config import load_config

SMALL = ["data.mock.train_sentences=60", "data.mock.dev_sentences=20", "data.mock.test_sentences=20",
         "data.mock.langs=[en,ru]", "data.max_seq_length=32", "teacher.num_layers=2", "teacher.hidden_size=32",
         "teacher.num_heads=2", "teacher.intermediate_size=64", "student.num_layers=2", "student.hidden_size=16",
         "student.num_heads=2", "student.intermediate_size=32", "student.embedding_size=8", "distill.batch_size=8",
         "distill.lr=3e-3", "tokenizer.mock_vocab_size=600", "output.tensorboard=false"]


@pytest.fixture(scope="module")
def mock_task(tmp_path_factory):
    from xdt.recipes.setup import prepare

    root = tmp_path_factory.mktemp("mock")
    cfg = load_config(None, [*SMALL, f"data.cache_dir={root}"])
    _, tokenizer, data = prepare(cfg)
    return cfg, data
