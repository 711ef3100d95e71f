"""Teacher-output cache (xdt.distill.teacher_cache) against the on-the-fly teacher, on real WikiAnn sentences.

Tolerances: the cache stores fp16. Read back for the build's own batches it equals the fp32 teacher outputs cast
to fp16 and back *exactly*; for other batches (other padding width and batch mates, so fp32 results differ in the
last bits) it is within rtol 1e-3 (fp16 has an 11-bit significand: relative rounding error <= 2^-11 ~ 4.9e-4)
plus atol 1e-5 of the fp32 outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from xdt.data.align import AlignedFeatures, Aligner
from xdt.data.batching import WindowBatcher
from xdt.data.sentence import WIKIANN_LABELS
from xdt.distill.losses import DistillLoss, HiddenProjector
from xdt.distill.step import teacher_outputs_to
from xdt.distill.teacher_cache import (TeacherCache, build_teacher_cache, features_content_id, shard_batches,
                                       shard_name, shard_windows, teacher_weights_hash)
from xdt.errors import XdtError

from tests.conftest import SHARED_DATA, need

LAYERS = [1, 2]  # teacher hidden states stored (of 0..2)
MAX_LEN = 32  # short, so that some sentences need several windows
RTOL, ATOL = 1e-3, 1e-5


def _teacher(vocab_size: int, seed: int = 0):
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=MAX_LEN, num_labels=len(WIKIANN_LABELS))
    return BertForTokenClassification(config).eval()


@pytest.fixture(scope="module")
def setup(mbert_tokenizer, tmp_path_factory):
    from xdt.data.discover import read_split
    from xdt.data.tokenizer import tokenizer_fingerprint

    dev = read_split(need(SHARED_DATA / "wikiann" / "xtreme"), "dev", langs=["en", "de", "ar"])["dev"]
    sentences = [s for lang in ("en", "de", "ar") for s in dev[lang][:100]]
    features = Aligner(mbert_tokenizer, MAX_LEN).align(sentences)
    assert features.num_windows > len(sentences)  # windowing is exercised
    teacher = _teacher(len(mbert_tokenizer))
    root = tmp_path_factory.mktemp("teacher_cache")
    teacher.save_pretrained(root / "teacher")
    keys = dict(content_id=features_content_id(features), tokenizer_fp=tokenizer_fingerprint(mbert_tokenizer),
                max_seq_length=MAX_LEN)
    manifest = build_teacher_cache(teacher, features, root / "one", layers=LAYERS, batch_size=16,
                                   teacher_path=root / "teacher", pad_id=mbert_tokenizer.pad_token_id,
                                   progress=False, **keys)
    return {"features": features, "teacher": teacher, "root": root, "keys": keys, "manifest": manifest,
            "pad": mbert_tokenizer.pad_token_id, "hash": teacher_weights_hash(root / "teacher")}


def _open(path, setup, **overrides):
    kwargs = {**setup["keys"], "teacher_hash": setup["hash"], "layers_needed": LAYERS, **overrides}
    return TeacherCache.open(path, **kwargs)


def _teacher_out(teacher, batch):
    with torch.no_grad():
        return teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True)


def test_manifest(setup):
    m = setup["manifest"]
    f = setup["features"]
    assert m["num_windows"] == f.num_windows and m["num_tokens"] == len(f.input_ids)
    assert m["layers"] == LAYERS and m["num_labels"] == len(WIKIANN_LABELS) and m["hidden_size"] == 32
    assert m["dtype"] == "float16" and m["num_hidden_states"] == 3 and m["teacher_hash"] == setup["hash"]
    assert [s["name"] for s in m["shards"]] == [shard_name(0, 1)]
    assert json.loads((setup["root"] / "one" / "manifest.json").read_text()) == m
    # only real tokens are stored: one row per token of the flat features
    logits = np.load(setup["root"] / "one" / shard_name(0, 1) / "logits.npy", mmap_mode="r")
    assert logits.shape == (len(f.input_ids), len(WIKIANN_LABELS)) and logits.dtype == np.float16


def test_equals_teacher_cast_to_fp16_on_build_batches(setup):
    """The build's own batches: cached == fp32 teacher output -> fp16 -> fp32, bit for bit."""
    f, teacher = setup["features"], setup["teacher"]
    cache = _open(setup["root"] / "one", setup)
    batcher = WindowBatcher(f, setup["pad"])
    for windows in shard_batches(f, shard_windows(f.num_windows, 0, 1), 16):
        batch = batcher.collate(windows)
        ref = _teacher_out(teacher, batch)
        got = cache.batch(batch["window"], batch["input_ids"].shape[1])
        real = batch["attention_mask"].bool()
        assert got["attentions"] is None and got["hidden_states"][0] is None
        pairs = [("logits", ref.logits, got["logits"])]
        pairs += [(f"state {x}", ref.hidden_states[x], got["hidden_states"][x]) for x in LAYERS]
        for what, r, g in pairs:
            assert g.dtype == torch.float32 and g.shape == r.shape, what
            assert torch.equal(g[real], r[real].half().float()), what
            assert not g[~real].any(), f"{what}: padding must be zero"


def test_close_to_teacher_on_training_batches(setup):
    """Shuffled, length-bucketed training batches (other widths and batch mates): close in values and in loss."""
    f, teacher = setup["features"], setup["teacher"]
    cache = _open(setup["root"] / "one", setup)
    batcher = WindowBatcher(f, setup["pad"])
    torch.manual_seed(0)
    projector = HiddenProjector([(1, 1), (2, 2)], 32, 32, dropout=0.0)
    loss = DistillLoss({"hidden": 1.0, "logits": 1.0}, projector=projector)
    student = _teacher(setup["teacher"].config.vocab_size, seed=1)
    for i, batch in enumerate(batcher.epoch(24, seed=3, epoch=0)):
        if i == 4:
            break
        ref = _teacher_out(teacher, batch)
        got = cache.batch(batch["window"], batch["input_ids"].shape[1])
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(got["logits"][real], ref.logits[real], rtol=RTOL, atol=ATOL)
        for x in LAYERS:
            torch.testing.assert_close(got["hidden_states"][x][real], ref.hidden_states[x][real], rtol=RTOL,
                                       atol=ATOL)
        with torch.no_grad():
            out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          output_hidden_states=True)
        mask = batch["word_index"] >= 0
        cached, _ = loss(out, got, mask=mask)
        live, _ = loss(out, teacher_outputs_to(ref, torch.device("cpu")), mask=mask)
        assert cached.item() == pytest.approx(live.item(), rel=1e-3)


@pytest.mark.parametrize("field", ["content_id", "tokenizer_fp", "max_seq_length", "teacher_hash"])
def test_stale_cache_refused(setup, field):
    other = {"content_id": "windows:other", "tokenizer_fp": "0" * 16, "max_seq_length": 64,
             "teacher_hash": "safetensors:other"}[field]
    with pytest.raises(XdtError, match=f"stale teacher cache: {field}"):
        _open(setup["root"] / "one", setup, **{field: other})


def test_missing_layers_refused(setup):
    with pytest.raises(XdtError, match=r"lacks hidden states \[0\]"):
        _open(setup["root"] / "one", setup, layers_needed=[0, 2])
    assert _open(setup["root"] / "one", setup, teacher_hash=None, layers_needed=[]).num_windows > 0


def test_teacher_hash(setup, tmp_path):
    folder = setup["root"] / "teacher"
    assert teacher_weights_hash(folder) == setup["hash"] and setup["hash"].startswith("safetensors:")
    teacher = _teacher(setup["teacher"].config.vocab_size)
    assert teacher_weights_hash(teacher) == teacher_weights_hash(setup["teacher"])
    with torch.no_grad():
        teacher.classifier.bias[0] += 1e-3
    assert teacher_weights_hash(teacher) != teacher_weights_hash(setup["teacher"])
    teacher.save_pretrained(tmp_path / "changed")
    assert teacher_weights_hash(tmp_path / "changed") != setup["hash"]
    with pytest.raises(XdtError, match="no \\*.safetensors"):
        teacher_weights_hash(tmp_path)


def _build_two(setup, out, ranks=(0, 1)):
    results = []
    for r in ranks:
        results.append(build_teacher_cache(setup["teacher"], setup["features"], out, layers=LAYERS, batch_size=16,
                                           teacher_path=setup["root"] / "teacher", rank=r, world=2,
                                           pad_id=setup["pad"], progress=False, **setup["keys"]))
    return results


def _assert_same_windows(a: TeacherCache, b: TeacherCache, features: AlignedFeatures):
    assert a.num_windows == b.num_windows == features.num_windows
    lengths = features.window_lengths()
    for lo in range(0, features.num_windows, 64):
        windows = torch.arange(lo, min(lo + 64, features.num_windows))
        width = int(lengths[windows.numpy()].max())
        x, y = a.batch(windows, width), b.batch(windows, width)
        torch.testing.assert_close(x["logits"], y["logits"], rtol=RTOL, atol=ATOL)
        for s in LAYERS:
            torch.testing.assert_close(x["hidden_states"][s], y["hidden_states"][s], rtol=RTOL, atol=ATOL)


def test_two_shards_read_back_as_one(setup, tmp_path):
    out = tmp_path / "two"
    [first] = _build_two(setup, out, ranks=(0,))
    assert "shards" not in first  # rank 0 alone: its shard metadata, no manifest yet
    with pytest.raises(XdtError, match="partial teacher cache: no manifest.json"):
        _open(out, setup)
    [second] = _build_two(setup, out, ranks=(1,))
    assert [s["windows"] for s in second["shards"]] == [len(shard_windows(setup["features"].num_windows, r, 2))
                                                        for r in range(2)]
    two = _open(out, setup)
    _assert_same_windows(two, _open(setup["root"] / "one", setup), setup["features"])
    two.check_features(setup["features"])


def test_partial_cache_refused(setup, tmp_path):
    out = tmp_path / "two"
    _build_two(setup, out)
    (out / shard_name(1, 2) / "complete").unlink()
    with pytest.raises(XdtError, match="partial teacher cache: shard without its 'complete' marker"):
        _open(out, setup)
    shutil.rmtree(out / shard_name(1, 2))
    with pytest.raises(XdtError, match="partial teacher cache"):
        _open(out, setup)
    (out / "manifest.json").unlink()
    with pytest.raises(XdtError, match="no manifest.json"):
        _open(out, setup)
    # rebuilding the missing shard alone completes the cache again (that call writes the manifest)
    _build_two(setup, out, ranks=(1,))
    assert _open(out, setup).num_windows == setup["features"].num_windows


def test_rebuilt_shard_with_other_teacher_refused(setup, tmp_path):
    out = tmp_path / "mixed"
    _build_two(setup, out)
    shard = out / shard_name(1, 2) / "shard.json"
    meta = json.loads(shard.read_text())
    shard.write_text(json.dumps({**meta, "teacher_hash": "safetensors:other"}))
    with pytest.raises(XdtError, match="shard teacher_hash"):
        _open(out, setup)


def _gloo_worker(rank: int, world: int, port: int, folder: str, features_file: str, keys: dict, out: str, pad: int):
    from transformers import BertForTokenClassification

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    try:
        data = np.load(features_file)
        features = AlignedFeatures(**{k: data[k] for k in data.files})
        teacher = BertForTokenClassification.from_pretrained(folder).eval()
        build_teacher_cache(teacher, features, out, layers=LAYERS, batch_size=16, teacher_path=folder, rank=rank,
                            world=world, pad_id=pad, progress=False, **keys)
        assert (Path(out) / "manifest.json").exists()  # the closing barrier: every rank sees the manifest
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks(setup, tmp_path):
    """Two real processes in one torch.distributed (gloo) group build the shards; rank 0 writes the manifest."""
    import torch.multiprocessing as mp

    features_file = tmp_path / "features.npz"
    np.savez(features_file, **setup["features"].__dict__)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.start_processes(_gloo_worker, args=(2, port, str(setup["root"] / "teacher"), str(features_file),
                                           setup["keys"], str(tmp_path / "gloo"), setup["pad"]),
                       nprocs=2, join=True, start_method="spawn")
    two = _open(tmp_path / "gloo", setup)
    assert [s["name"] for s in two.manifest["shards"]] == [shard_name(0, 2), shard_name(1, 2)]
    _assert_same_windows(two, _open(setup["root"] / "one", setup), setup["features"])



def test_tokenizer_fingerprint_ignores_saved_truncation_and_padding(tmp_path):
    """A folder saved with truncation/padding enabled (sentence-transformers does) must fingerprint the same before
    and after the tokenizer's first call, which resets that state: else a cache built by one process reads as stale
    in another that took every split from the alignment cache."""
    from xdt.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    source = load_tokenizer(need(SHARED_DATA / "vocab" / "bert-base-multilingual-cased"))
    source.backend_tokenizer.enable_truncation(max_length=128)
    source.backend_tokenizer.enable_padding(length=128)
    source.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text())["truncation"] is not None
    fresh = load_tokenizer(tmp_path)
    before = tokenizer_fingerprint(fresh)
    fresh(["Berlin", "ist", "schön"], is_split_into_words=True, truncation=False)
    assert tokenizer_fingerprint(fresh) == before == tokenizer_fingerprint(load_tokenizer(tmp_path))
