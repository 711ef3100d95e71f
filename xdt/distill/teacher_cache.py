"""Teacher outputs cached to disk: logits and chosen hidden states per real token (per word across tokenizers), as
numpy memmaps, one shard per rank.

`TeacherCache.open` refuses a partial cache (the manifest is written last, shards are renamed into place) and a
stale one (teacher weights' hash, data content id, tokenizer fingerprints, max length and pooling are recorded and
any mismatch is named). Shards may be built by the ranks of one job or by separate processes; whichever finishes
the last shard writes the manifest. The folder layout: docs/internals.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from xdt.config import RunConfig
from xdt.data.align import AlignedFeatures
from xdt.data.task import TaskData
from xdt.data.tokenizer import tokenizer_fingerprint
from xdt.data.word_bridge import Pooling, WordBridge, scatter_words
from xdt.errors import XdtError
from xdt.outputs import CACHE_MANIFEST

FORMAT = "xdt-teacher-cache"
VERSION = 1
MANIFEST = CACHE_MANIFEST
MARKER = "complete"
# fields that decide the cached values: a mismatch makes the cache stale
_KEYED = ("teacher_hash", "content_id", "tokenizer_fp", "max_seq_length", "teacher_tokenizer_fp", "word_pooling")
_DTYPES = {"float16": np.float16, "float32": np.float32}


# --------------------------------------------------------------------------------------------- identities


def _hash_state_dict(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return "state_dict:" + h.hexdigest()


def teacher_weights_hash(path_or_model: str | Path | torch.nn.Module) -> str:
    """sha256 over the `*.safetensors` files of a teacher folder (names and bytes, sorted by name), or over a
    module's state_dict (names, dtypes, shapes, bytes) when given a module or a folder without safetensors files.

    The two kinds never compare equal (prefixes `safetensors:` / `state_dict:`): hash a cache's teacher the same way
    when building and opening it (the folder, in `xdt distill`).
    """
    if isinstance(path_or_model, torch.nn.Module):
        return _hash_state_dict(path_or_model)
    path = Path(path_or_model)
    if not path.is_dir():
        raise XdtError(f"{path}: teacher folder not found (cannot hash its weights)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise XdtError(f"{path}: no *.safetensors files to hash; save the teacher with save_pretrained "
                       "(safetensors), or pass the loaded model")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return "safetensors:" + h.hexdigest()


def features_content_id(features: AlignedFeatures) -> str:
    """A content id for aligned windows: sha256 of their token ids and window offsets (what the teacher sees)."""
    h = hashlib.sha256()
    for arr in (features.offsets, features.input_ids):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return "windows:" + h.hexdigest()[:32]


def cache_keys(cfg: RunConfig, data: TaskData) -> dict:
    """What a teacher cache is keyed by: the student's windows and tokenizer, the teacher's tokenizer (and, where
    it is another, how words are pooled)."""
    keys = {"content_id": features_content_id(data.transfer.features),
            "tokenizer_fp": tokenizer_fingerprint(data.tokenizer), "max_seq_length": cfg.data.max_seq_length}
    if data.cross_tokenizer:
        keys |= {"teacher_tokenizer_fp": tokenizer_fingerprint(data.teacher_tokenizer),
                 "word_pooling": cfg.distill.word_pooling}
    return keys


# --------------------------------------------------------------------------------------------- build


def shard_name(rank: int, world: int) -> str:
    return f"shard-{rank:05d}-of-{world:05d}"


def shard_windows(num_windows: int, rank: int, world: int) -> np.ndarray:
    return np.arange(rank, num_windows, world, dtype=np.int64)


def shard_batches(features: AlignedFeatures, windows: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """The build's batches: a shard's windows sorted by length, longest first (little padding)."""
    lengths = features.offsets[windows + 1] - features.offsets[windows]
    order = np.argsort(-lengths, kind="stable")
    return [windows[order[i:i + batch_size]] for i in range(0, len(windows), batch_size)]


def _collate(features: AlignedFeatures, windows: np.ndarray, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    starts = features.offsets[windows]
    lengths = features.offsets[windows + 1] - starts
    width = int(lengths.max())
    ids = np.full((len(windows), width), pad_id, np.int64)
    mask = np.zeros((len(windows), width), np.int64)
    for row, (lo, n) in enumerate(zip(starts, lengths)):
        ids[row, :n] = features.input_ids[lo:lo + n]
        mask[row, :n] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _open_array(path: Path, shape: tuple[int, ...], dtype) -> np.ndarray:
    if 0 in shape:  # numpy cannot memory-map an empty file
        np.save(path, np.zeros(shape, dtype))
        return np.zeros(shape, dtype)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):  # empty arrays cannot be memory-mapped; a short file is read below
        pass
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:  # cut short, missing, or an object array (pickle runs code)
        raise XdtError(f"{path}: not a teacher-cache array ({err}); rebuild the cache") from None


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise XdtError(f"{path}: unreadable teacher-cache metadata ({err}); rebuild the cache") from None
    if not isinstance(value, dict):
        raise XdtError(f"{path}: unreadable teacher-cache metadata (not a JSON object); rebuild the cache")
    return value


def _cast(values: torch.Tensor, dtype, what: str) -> np.ndarray:
    """Teacher outputs as a numpy array of the cache's dtype; values a float16 cache cannot hold are refused."""
    v = values.detach().to(device="cpu", dtype=torch.float32).numpy()
    cast = v.astype(dtype)
    if dtype != np.float32 and not np.isfinite(cast).all() and np.isfinite(v).all():
        raise XdtError(f"teacher {what} exceed the {np.dtype(dtype).name} range (max |x| = {np.abs(v).max():.4g}); "
                       "build the cache with dtype float32")
    return cast


def _store(out: np.ndarray, rows: list[tuple[int, int]], values: torch.Tensor, what: str) -> None:
    """Copy each window's real rows of `values` [B, T, D] into `out` at its shard rows."""
    cast = _cast(values, out.dtype, what)
    for b, (lo, n) in enumerate(rows):
        out[lo:lo + n] = cast[b, :n]


def _store_rows(out: np.ndarray, dest: np.ndarray, values: torch.Tensor, what: str) -> None:
    """Per-word `values` [W, D] into rows `dest` of `out`."""
    out[dest] = _cast(values, out.dtype, what)


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _keyed(manifest: dict, key: str):
    """A keyed field of a manifest; caches written before cross-tokenizer caching had one tokenizer, per token."""
    if key == "teacher_tokenizer_fp" and key not in manifest:
        return manifest.get("tokenizer_fp")
    return manifest.get(key)


def window_rows(features: AlignedFeatures, windows: np.ndarray, unit: str) -> np.ndarray:
    """Rows a cache stores per window: its tokens, or (unit word) its word slots."""
    if unit == "token":
        return (features.offsets[windows + 1] - features.offsets[windows]).astype(np.int64)
    slots = np.add.reduceat((features.word_index >= 0).astype(np.int64), features.offsets[:-1]) \
        if len(features.input_ids) else np.zeros(features.num_windows, np.int64)
    return slots[windows].astype(np.int64)


@torch.no_grad()
def build_teacher_cache(teacher: torch.nn.Module, features: AlignedFeatures, out_dir: str | Path, *,
                        layers: list[int], batch_size: int, content_id: str, tokenizer_fp: str,
                        max_seq_length: int, teacher_path: str | Path | None, rank: int = 0, world: int = 1,
                        dtype=np.float16, pad_id: int = 0, progress: bool = True, bridge: WordBridge | None = None,
                        teacher_tokenizer_fp: str | None = None, word_pooling: Pooling = "first") -> dict:
    """Run the teacher (eval mode, no gradients) over this rank's windows (r::world) and write its shard; when
    every shard is complete, write `manifest.json` (rank 0 after a barrier under torch.distributed; otherwise the
    process that completes the last shard). Returns the manifest when this call wrote or found it complete, else
    this shard's metadata (a shard of a build whose other shards are still to come).

    `teacher_path`: the teacher's folder, hashed by its safetensors files; None (or a folder without them) hashes
    the module's state_dict. `layers`: teacher hidden-state numbers to store (0 = embeddings, L = last layer);
    may be empty (logits only). `pad_id`: the teacher tokenizer's pad id (padding is masked, so only speed depends
    on it). `bridge`: where the teacher has its own tokenizer (fingerprint `teacher_tokenizer_fp`), the word bridge
    of `features` (the student's windows) to the teacher's; rows are then words, pooled by `word_pooling`.
    """
    out_dir = Path(out_dir)
    dtype_name = np.dtype(dtype).name
    if dtype_name not in _DTYPES:
        raise XdtError(f"teacher cache dtype {dtype_name}: expected one of {sorted(_DTYPES)}")
    if not 0 <= rank < world:
        raise XdtError(f"teacher cache: rank {rank} outside world {world}")
    config = teacher.config
    num_states = int(config.num_hidden_layers) + 1
    layers = sorted({int(x) for x in layers})
    bad = [x for x in layers if not 0 <= x < num_states]
    if bad:
        raise XdtError(f"teacher cache layers {bad}: the teacher has hidden states 0..{num_states - 1}")
    teacher_hash = (teacher_weights_hash(teacher_path)
                    if teacher_path is not None and any(Path(teacher_path).glob("*.safetensors"))
                    else teacher_weights_hash(teacher))
    num_labels, hidden = int(config.num_labels), int(config.hidden_size)
    unit = "word" if bridge is not None else "token"
    if bridge is not None and (teacher_tokenizer_fp is None or teacher_tokenizer_fp == tokenizer_fp):
        raise XdtError("teacher cache: a word bridge needs the teacher's own tokenizer fingerprint (it differs from "
                       "the student's)")
    meta = {"unit": unit, "teacher_tokenizer_fp": teacher_tokenizer_fp or tokenizer_fp,
            "word_pooling": word_pooling if bridge is not None else None, "format": FORMAT, "version": VERSION,
            "teacher_hash": teacher_hash,
            "teacher_path": str(teacher_path) if teacher_path is not None else None, "content_id": content_id,
            "tokenizer_fp": tokenizer_fp, "max_seq_length": int(max_seq_length), "layers": layers,
            "num_hidden_states": num_states, "num_labels": num_labels, "hidden_size": hidden, "dtype": dtype_name,
            "num_windows": int(features.num_windows), "world": int(world)}

    if out_dir.exists() and not out_dir.is_dir():
        raise XdtError(f"distill.teacher_cache: {out_dir} exists and is not a folder")
    # a cache is rebuilt in place, but never over a folder that holds anything else (a run, data)
    strangers = sorted(e.name for e in out_dir.iterdir() if e.name != MANIFEST
                       and not e.name.lstrip(".").startswith("shard-")) if out_dir.is_dir() else []
    if strangers:
        raise XdtError(f"distill.teacher_cache: {out_dir} holds files that are not a teacher cache "
                       f"({', '.join(strangers[:3])}); choose a new or empty folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # a job of several ranks builds one shard per rank, collectively; a lone process (even one that set up a
    # one-rank group, as every xdt command does) may build any shard, e.g. all of them one after the other
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1
    if distributed and (rank, world) != (torch.distributed.get_rank(), torch.distributed.get_world_size()):
        raise XdtError(f"teacher cache: built as rank {rank} of {world} inside a torch.distributed job of rank "
                       f"{torch.distributed.get_rank()} of {torch.distributed.get_world_size()}; every rank must "
                       "call build_teacher_cache with its own rank and the world size")
    if rank == 0:
        (out_dir / MANIFEST).unlink(missing_ok=True)  # from here on the old cache reads as partial
    name = shard_name(rank, world)
    final = out_dir / name
    if final.exists():
        shutil.rmtree(final)

    windows = shard_windows(features.num_windows, rank, world)
    lengths = window_rows(features, windows, unit)
    offsets = np.zeros(len(windows) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row_of = {int(w): (int(offsets[i]), int(lengths[i])) for i, w in enumerate(windows)}
    tokens = int(offsets[-1])

    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=out_dir))
    started = time.perf_counter()
    try:
        np.save(tmp / "windows.npy", windows)
        np.save(tmp / "offsets.npy", offsets)
        logits = _open_array(tmp / "logits.npy", (tokens, num_labels), _DTYPES[dtype_name])
        states = {x: _open_array(tmp / f"hidden-{x:02d}.npy", (tokens, hidden), _DTYPES[dtype_name])
                  for x in layers}
        batches = shard_batches(features, windows, batch_size)
        bar = None
        if progress and rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(batches), desc=f"teacher cache {name}", dynamic_ncols=True)
        def run_teacher(ids: torch.Tensor, mask: torch.Tensor) -> dict:
            out = teacher(input_ids=ids.to(device), attention_mask=mask.to(device),
                          output_hidden_states=bool(layers))
            return {"logits": out.logits, "hidden_states": out.hidden_states}

        for batch in batches:
            rows = [row_of[int(w)] for w in batch]
            if bridge is None:
                out = run_teacher(*_collate(features, batch, pad_id))
                _store(logits, rows, out["logits"], "logits")
                for x in layers:
                    _store(states[x], rows, out["hidden_states"][x], f"hidden state {x}")
                continue
            # per word: the batch's words in window order, each window's rows consecutive
            _, _, words = bridge.slots(batch)
            dest = np.concatenate([np.arange(lo, lo + n) for lo, n in rows])
            values = bridge.word_outputs(run_teacher, words, layers, word_pooling, pad_id)
            _store_rows(logits, dest, values["logits"], "logits")
            for x in layers:
                _store_rows(states[x], dest, values[x], f"hidden state {x}")
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        for arr in (logits, *states.values()):
            if isinstance(arr, np.memmap):
                arr.flush()
        del logits, states
        shard_meta = {**meta, "rank": rank, "windows": len(windows), "tokens": tokens,
                      "seconds": round(time.perf_counter() - started, 3),
                      "teacher_dtype": str(next(teacher.parameters()).dtype).replace("torch.", "")}
        (tmp / "shard.json").write_text(json.dumps(shard_meta, indent=1, sort_keys=True) + "\n")
        (tmp / MARKER).write_text("")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        teacher.train(was_training)

    if distributed:
        torch.distributed.barrier()
        manifest = write_manifest(out_dir, world) if rank == 0 else None
        torch.distributed.barrier()  # no rank opens the cache before the manifest exists
        return manifest or json.loads((out_dir / MANIFEST).read_text())
    if all((out_dir / shard_name(r, world) / MARKER).exists() for r in range(world)):
        return write_manifest(out_dir, world)
    return shard_meta


def write_manifest(out_dir: str | Path, world: int) -> dict:
    """`manifest.json` from the `world` complete shards of `out_dir`; refuses missing, partial or mixed shards."""
    out_dir = Path(out_dir)
    metas = []
    for r in range(world):
        shard = out_dir / shard_name(r, world)
        if not (shard / MARKER).exists():
            raise XdtError(f"{shard}: shard missing or incomplete (no '{MARKER}' marker); build rank {r} of {world}")
        metas.append(json.loads((shard / "shard.json").read_text()))
    common = {k: v for k, v in metas[0].items() if k not in ("rank", "windows", "tokens", "seconds")}
    for m in metas[1:]:
        for k, v in common.items():
            if k != "teacher_dtype" and m.get(k) != v:
                raise XdtError(f"{out_dir}: shards disagree on {k} ({v!r} in rank 0, {m.get(k)!r} in rank "
                               f"{m['rank']}); rebuild the cache")
    windows = sum(m["windows"] for m in metas)
    if windows != common["num_windows"]:
        raise XdtError(f"{out_dir}: shards hold {windows} windows, the data has {common['num_windows']}")
    manifest = {**common, "num_tokens": sum(m["tokens"] for m in metas), "created": time.time(),
                "shards": [{"name": shard_name(m["rank"], world), "rank": m["rank"], "windows": m["windows"],
                            "tokens": m["tokens"]} for m in metas]}
    _write_json_atomic(out_dir / MANIFEST, manifest)
    return manifest


# --------------------------------------------------------------------------------------------- read


class TeacherCache:
    """Memory-mapped shards of a complete, matching cache; `batch()` gives the teacher outputs of a batch."""

    def __init__(self, path: Path, manifest: dict, shards: list[dict[str, np.ndarray]], shard_of: np.ndarray,
                 start_of: np.ndarray, length_of: np.ndarray):
        self.path = path
        self.manifest = manifest
        self.layers: list[int] = list(manifest["layers"])
        self.num_labels: int = manifest["num_labels"]
        self.hidden_size: int = manifest["hidden_size"]
        self.num_hidden_states: int = manifest["num_hidden_states"]
        self.unit: str = manifest.get("unit", "token")
        self._shards = shards
        self._shard_of, self._start_of, self._length_of = shard_of, start_of, length_of

    @classmethod
    def open(cls, path: str | Path, *, content_id: str, tokenizer_fp: str, max_seq_length: int,
             teacher_hash: str | None, layers_needed: list[int] = (), teacher_tokenizer_fp: str | None = None,
             word_pooling: Pooling | None = None) -> TeacherCache:
        """Refuses (XdtError naming the field) a cache built from another teacher (`teacher_hash`; None skips
        this check), other data, student or teacher tokenizer (`teacher_tokenizer_fp`, None: the student's),
        pooling, or max length, one that lacks a needed hidden state, and a partial one.
        """
        path = Path(path)
        mf = path / MANIFEST
        if not path.is_dir():
            raise XdtError(f"{path}: teacher cache folder not found")
        if not mf.exists():
            raise XdtError(f"{path}: partial teacher cache: no {MANIFEST} (a build did not finish on every rank); "
                           "rebuild it")
        manifest = _read_json(mf)
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise XdtError(f"{path}: not an {FORMAT} v{VERSION} cache (format {manifest.get('format')!r}, "
                           f"version {manifest.get('version')!r}); rebuild it")
        cross = teacher_tokenizer_fp is not None and teacher_tokenizer_fp != tokenizer_fp
        wanted = {"teacher_hash": teacher_hash, "content_id": content_id, "tokenizer_fp": tokenizer_fp,
                  "max_seq_length": int(max_seq_length), "teacher_tokenizer_fp": teacher_tokenizer_fp or tokenizer_fp,
                  "word_pooling": word_pooling if cross else None}
        for key in _KEYED:
            if (wanted[key] is not None or key == "word_pooling") and _keyed(manifest, key) != wanted[key]:
                raise XdtError(f"{path}: stale teacher cache: {key} is {_keyed(manifest, key)!r} in the cache, "
                               f"{wanted[key]!r} now; rebuild it")
        missing = sorted(set(int(x) for x in layers_needed) - set(manifest["layers"]))
        if missing:
            raise XdtError(f"{path}: teacher cache lacks hidden states {missing} (layers: it holds "
                           f"{manifest['layers']}); rebuild it with these layers")

        n = manifest["num_windows"]
        shard_of = np.full(n, -1, np.int32)
        start_of = np.zeros(n, np.int64)
        length_of = np.zeros(n, np.int64)
        shards = []
        dt = np.dtype(manifest["dtype"])
        for i, entry in enumerate(manifest["shards"]):
            d = path / entry["name"]
            if not (d / MARKER).exists():
                raise XdtError(f"{d}: partial teacher cache: shard without its '{MARKER}' marker; rebuild it")
            meta = _read_json(d / "shard.json")
            for key in (*_KEYED, "layers", "num_windows", "dtype"):
                if _keyed(meta, key) != _keyed(manifest, key):
                    raise XdtError(f"{d}: shard {key} {meta.get(key)!r} differs from the manifest's "
                                   f"{manifest[key]!r} (rebuilt after the manifest); rebuild the cache")
            arrays = {"logits": _load_array(d / "logits.npy")}
            arrays.update({x: _load_array(d / f"hidden-{x:02d}.npy") for x in manifest["layers"]})
            windows, offsets = (np.asarray(_load_array(d / f"{x}.npy")) for x in ("windows", "offsets"))
            widths = {"logits": manifest["num_labels"], **{x: manifest["hidden_size"] for x in manifest["layers"]}}
            if (windows.ndim != 1 or offsets.ndim != 1 or len(offsets) != len(windows) + 1
                    or any(arrays[k].shape != (offsets[-1], w) or arrays[k].dtype != dt for k, w in widths.items())):
                raise XdtError(f"{d}: shard arrays do not match its index; rebuild the cache")
            if len(windows) and (windows.min() < 0 or windows.max() >= n or (shard_of[windows] >= 0).any()):
                raise XdtError(f"{d}: shard windows out of range or held twice; rebuild the cache")
            shard_of[windows] = i
            start_of[windows] = offsets[:-1]
            length_of[windows] = np.diff(offsets)
            shards.append(arrays)
        if (shard_of < 0).any():
            raise XdtError(f"{path}: partial teacher cache: {int((shard_of < 0).sum())} of {n} windows in no shard")
        return cls(path, manifest, shards, shard_of, start_of, length_of)

    @property
    def num_windows(self) -> int:
        return len(self._shard_of)

    def window_lengths(self) -> np.ndarray:
        return self._length_of.copy()

    def check_features(self, features: AlignedFeatures) -> None:
        """Refuse features whose windows are not the cached ones (count, or tokens / words per window, differ)."""
        if features.num_windows != self.num_windows or not np.array_equal(
                window_rows(features, np.arange(features.num_windows), self.unit), self._length_of):
            raise XdtError(f"{self.path}: stale teacher cache: its windows differ from the data's "
                           f"({self.num_windows} cached, {features.num_windows} now); rebuild it")

    def window(self, k: int, layer: int | str = "logits") -> np.ndarray:
        """The cached rows of window k (fp16 memmap view): `layer` = "logits" or a stored hidden-state number."""
        arrays = self._shards[self._shard_of[k]]
        lo = self._start_of[k]
        return arrays[layer][lo:lo + self._length_of[k]]

    def batch(self, windows: torch.Tensor | np.ndarray, width: int, device: torch.device | str | None = None,
              word_index: torch.Tensor | None = None) -> dict:
        """Teacher outputs of a batch as the distillation losses read them: `logits` float32 [B, width, C] and
        `hidden_states` (a tuple indexed by teacher state number, None where not stored) [B, width, H], zero past
        each window's length; `attentions` None (never cached). A per-word cache (`unit` word) needs the batch's
        `word_index` [B, width]: each word's row goes to its slot (word_index >= 0), zero elsewhere."""
        w = np.asarray(windows.cpu() if isinstance(windows, torch.Tensor) else windows, np.int64).reshape(-1)
        if self.unit == "word":
            return self._word_batch(w, width, device, word_index)
        lengths = self._length_of[w]
        if len(w) and int(lengths.max()) > width:
            raise ValueError(f"batch width {width} is shorter than window {int(w[lengths.argmax()])} "
                             f"({int(lengths.max())} tokens)")
        keys = ["logits", *self.layers]
        dims = {"logits": self.num_labels, **{x: self.hidden_size for x in self.layers}}
        out = {k: np.zeros((len(w), width, dims[k]), np.float32) for k in keys}
        for b, k in enumerate(w):
            arrays = self._shards[self._shard_of[k]]
            lo, n = self._start_of[k], lengths[b]
            for key in keys:
                out[key][b, :n] = arrays[key][lo:lo + n]
        tensors = {k: torch.from_numpy(v).to(device) if device is not None else torch.from_numpy(v)
                   for k, v in out.items()}
        hidden = tuple(tensors.get(x) for x in range(self.num_hidden_states)) if self.layers else None
        return {"logits": tensors["logits"], "hidden_states": hidden, "attentions": None}

    def _word_batch(self, w: np.ndarray, width: int, device, word_index: torch.Tensor | None) -> dict:
        if word_index is None:
            raise ValueError(f"{self.path}: a per-word teacher cache needs the batch's word_index")
        slots = (word_index.cpu() >= 0).numpy()
        rows, positions = np.nonzero(slots)  # row-major: each window's slots in order
        if not np.array_equal(slots.sum(1), self._length_of[w]):
            raise ValueError(f"{self.path}: the batch's word slots differ from the cached words of its windows")
        keys = ["logits", *self.layers]
        placed = {}
        for key in keys:
            values = np.concatenate([self.window(k, key) for k in w]).astype(np.float32)
            placed[key] = scatter_words(torch.from_numpy(values), rows, positions, len(w), width)
        if device is not None:
            placed = {k: v.to(device) for k, v in placed.items()}
        hidden = tuple(placed.get(x) for x in range(self.num_hidden_states)) if self.layers else None
        return {"logits": placed["logits"], "hidden_states": hidden, "attentions": None}
