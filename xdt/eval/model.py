"""Load any HF token-classification model from a local folder, with its tokenizer, labels, device and dtype.

Weights are read only through `from_pretrained` with safetensors (`use_safetensors=True`), never with
`trust_remote_code`. Labels are the model's own `id2label`; they are matched to the data's tags by name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xdt.data.tokenizer import check_vocabulary, load_tokenizer, tokenizer_fingerprint
from xdt.errors import XdtError
from xdt.eval import bf16_bert, fast_bert

_GENERIC_LABEL = "LABEL_"


@dataclass
class LoadedModel:
    path: str
    model: torch.nn.Module
    tokenizer: Any
    id2label: dict[int, str]
    model_type: str
    architecture: str
    num_parameters: int
    device: torch.device
    dtype: torch.dtype
    max_positions: int | None
    precision: str = "fp32"  # what the CPU forward computes in: fp32, or bf16+fp32-recheck (xdt.eval.bf16_bert)

    @property
    def labels(self) -> list[str]:
        return [self.id2label[i] for i in sorted(self.id2label)]

    def describe(self) -> dict:
        """The model as the report records it; `weights_sha256` and `tokenizer_fingerprint` identify it for
        `xdt eval merge` (paths do not: one path may hold two models over time, one model two spellings)."""
        return {"path": self.path, "model_type": self.model_type, "architecture": self.architecture,
                "labels": self.labels, "parameters": self.num_parameters,
                "tokenizer": str(getattr(self.tokenizer, "name_or_path", "")),
                "device": self.device.type, "dtype": str(self.dtype).removeprefix("torch."),
                "weights_sha256": weights_digest(self.path),
                "tokenizer_fingerprint": tokenizer_fingerprint(self.tokenizer)}


WEIGHT_SUFFIXES = (".safetensors", ".onnx")


def weights_digest(folder: str | Path) -> str:
    """sha256 over the weight files of a model folder (`*.safetensors`, `*.onnx`: names and bytes, by name)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise XdtError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise XdtError(f"--device {device}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """auto: bf16 on a CUDA device that supports it, fp32 otherwise (CPU inference stays fp32)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if dtype not in table:
        raise XdtError(f"--dtype {dtype!r}: expected auto, fp32, bf16 or fp16")
    if table[dtype] == torch.float16 and device.type != "cuda":
        raise XdtError("--dtype fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return table[dtype]


def _check_folder(path: Path) -> dict:
    if not path.exists():
        raise XdtError(f"{path}: model folder not found")
    if not path.is_dir():
        raise XdtError(f"{path}: expected a model folder (config.json + model.safetensors), got a file")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise XdtError(f"{path}: no config.json; expected a folder written by save_pretrained "
                       "(config.json, model.safetensors, tokenizer files)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise XdtError(f"{config_file}: not valid JSON: {err}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise XdtError(f"{config_file}: no `model_type` key; expected a transformers model config")
    if not ((path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()):
        others = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".h5", ".msgpack"))
        hint = (f" (found {', '.join(others)}; xdt loads safetensors only: re-save it with "
                "model.save_pretrained(dir), which writes safetensors)") if others else ""
        raise XdtError(f"{path}: no model.safetensors (or model.safetensors.index.json){hint}")
    return config


def trained_window(path: str | Path) -> int | None:
    """The sub-words per window a model folder says it was trained with (`xdt_max_seq_length` in its config.json,
    written by xdt's training and kept by export, trim and ONNX export), or None (not written by xdt)."""
    from xdt.engine.hf_save import WINDOW_KEY

    config_file = Path(path) / "config.json"
    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get(WINDOW_KEY)
    except (OSError, ValueError, AttributeError):
        return None  # no readable config: loading the model names the fault
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 3:
        raise XdtError(f"{config_file}: {WINDOW_KEY} is {value!r}; expected the integer sub-words per window the "
                       "model was trained with (at least 3), or pass --max-seq-length")
    return value


PRECISIONS = ("auto", "fp32", "bf16")


def load_model(path: str | Path, tokenizer: str | Path | None = None, device: str = "auto",
               dtype: str = "auto", fast: bool = True, precision: str = "auto") -> LoadedModel:
    """`fast`: a plain BERT on fp32 CPU runs xdt.eval.fast_bert's forward (same labels, less work).
    `precision` (that forward only): fp32; bf16: bf16 matmuls with an fp32 re-check of every word they could
    mislabel (xdt.eval.bf16_bert: the fp32 labels); auto: bf16 where the CPU has native bf16 dot products."""
    if precision not in PRECISIONS:
        raise XdtError(f"--precision {precision!r}: expected auto, fp32 or bf16")
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    from xdt.deploy.onnx_predictor import is_onnx_folder

    path = Path(path)
    if is_onnx_folder(path):  # the deployment seam: `xdt export --format onnx` folders run with onnxruntime
        if precision == "bf16":
            raise XdtError(f"--precision bf16: {path} is an ONNX model, run by onnxruntime in its own precision")
        return _load_onnx(path, tokenizer, device, dtype)
    config = _check_folder(path)
    architectures = config.get("architectures") or []
    if architectures and not any(a.endswith("ForTokenClassification") for a in architectures):
        raise XdtError(f"{path}/config.json: architectures {architectures} has no *ForTokenClassification "
                       "model; expected a token-classification (NER) model")
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        tok = load_tokenizer(tokenizer or path)
    except XdtError as err:
        if tokenizer is None:
            raise XdtError(f"{err} (the model folder has no usable tokenizer; pass --tokenizer DIR)") from None
        raise
    check_vocabulary(tok, config.get("vocab_size"), path, tokenizer or path)
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModelForTokenClassification.from_pretrained(
            str(path), use_safetensors=True, trust_remote_code=False, output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise XdtError(f"{path}: cannot load a token-classification model: {err}") from None
    finally:
        hf_logging.enable_progress_bar()
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise XdtError(f"{path}: weights missing from model.safetensors: {shown}; the model would be partly random "
                       "(is it a token-classification checkpoint?)")
    model.to(device=dev, dtype=dt).eval()
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions is not None and model.config.model_type in ("roberta", "xlm-roberta", "camembert"):
        max_positions -= 2  # positions start after the padding index
    architecture = type(model).__name__
    num_parameters = sum(p.numel() for p in model.parameters())
    runs_in = "fp32" if dt == torch.float32 else str(dt).removeprefix("torch.")
    if fast and fast_bert.supports(model):
        if precision == "bf16" or (precision == "auto" and bf16_bert.cpu_has_native_bf16()):
            model = bf16_bert.Bf16RecheckBertTokenClassifier(model)
            runs_in = model.precision
        else:
            model = fast_bert.FastBertTokenClassifier(model)
    elif precision == "bf16":
        raise XdtError(f"--precision bf16: only a plain BERT token classifier in fp32 on the CPU has the bf16 "
                       f"forward with the fp32 re-check ({path}: {architecture}, {dev.type}, {dt}); use auto or fp32")
    return LoadedModel(path=str(path), model=model, tokenizer=tok, id2label=id2label,
                       model_type=model.config.model_type, architecture=architecture,
                       num_parameters=num_parameters, device=dev, dtype=dt, max_positions=max_positions,
                       precision=runs_in)


def _load_onnx(path: Path, tokenizer: str | Path | None, device: str, dtype: str) -> LoadedModel:
    """An ONNX folder behind the torch call eval makes (`model(input_ids=, attention_mask=).logits`), on the CPU."""
    from xdt.deploy.onnx_predictor import ONNX_FILE, OnnxTokenClassifier, onnx_parameters

    if device not in ("auto", "cpu") or dtype not in ("auto", "fp32", "float32"):
        raise XdtError(f"{path}: an ONNX model runs on the CPU with onnxruntime in its own precision; drop "
                       f"--device {device} / --dtype {dtype}")
    predictor = OnnxTokenClassifier(path)
    config = predictor.config
    try:
        tok = load_tokenizer(tokenizer or path)
    except XdtError as err:
        raise XdtError(f"{err} (the ONNX folder has no usable tokenizer; pass --tokenizer DIR)") from None
    check_vocabulary(tok, getattr(config, "vocab_size", None), path, tokenizer or path)
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions is not None and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        max_positions -= 2
    kind = predictor.quantization or "fp32"
    return LoadedModel(path=str(path), model=predictor, tokenizer=tok,
                       id2label={int(k): str(v) for k, v in config.id2label.items()}, model_type=config.model_type,
                       architecture=f"ONNX {kind} ({ONNX_FILE}, onnxruntime)",
                       num_parameters=predictor.manifest.get("torch_parameters") or onnx_parameters(path / ONNX_FILE),
                       device=torch.device("cpu"),
                       dtype=torch.float32, max_positions=max_positions)


def check_labels(model: LoadedModel, data_tags: set[str], where: str) -> None:
    """Every tag of the data must be one of the model's label names (by name, never by position)."""
    model_labels = set(model.labels)
    unknown = data_tags - model_labels
    if not unknown:
        return
    hint = ""
    if all(label.startswith(_GENERIC_LABEL) for label in model_labels):
        hint = (" (the model's config.json has generic id2label names LABEL_0..; save the model with "
                "id2label set to the tag names)")
    raise XdtError(f"{model.path}: the model's labels do not cover the tags of {where}: model labels "
                   f"[{' '.join(sorted(model_labels))}], data tags [{' '.join(sorted(data_tags))}], "
                   f"not in the model: [{' '.join(sorted(unknown))}]{hint}")
