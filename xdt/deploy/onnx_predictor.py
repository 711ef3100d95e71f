"""An `xdt export --format onnx` folder run by onnxruntime behind the call a torch model answers in eval:
`predictor(input_ids=..., attention_mask=...).logits` ([batch, length, labels], a torch tensor on the CPU).

This is the one seam through which `xdt eval` reaches a deployed model (`xdt.eval.model.load_model` hands such a
folder here); everything after the logits (argmax per word, scores, reports) is the code that scores PyTorch
models. onnxruntime is imported only when an ONNX folder is loaded (`pip install 'xdt[deploy]'`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from xdt.errors import XdtError

ONNX_FILE = "model.onnx"
MANIFEST = "onnx.json"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "logits"


def is_onnx_folder(path: str | Path) -> bool:
    return (Path(path) / ONNX_FILE).is_file()


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise XdtError("ONNX models need onnxruntime: pip install 'xdt[deploy]' (onnx, onnxruntime)") from None
    return onnxruntime


def session(path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session with every graph optimization; `threads`: intra-op threads (None: torch's)."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for unreadable or invalid graphs
        raise XdtError(f"{path}: onnxruntime cannot load this graph: {err}") from None


def onnx_parameters(path: str | Path) -> int:
    """Elements of every initializer (an int8 weight counts as one parameter, as in the fp32 graph)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(sum(int(np.prod(t.dims)) if t.dims else 1 for t in model.graph.initializer))


class _Output:
    __slots__ = ("logits",)

    def __init__(self, logits: torch.Tensor):
        self.logits = logits


class OnnxTokenClassifier:
    """Callable like a HF token classifier; `config` is the exported model's HF config (labels, positions)."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        from transformers import AutoConfig

        self.folder = Path(folder)
        if not is_onnx_folder(self.folder):
            raise XdtError(f"{self.folder}: no {ONNX_FILE}; expected a folder written by `xdt export --format onnx`")
        if not (self.folder / "config.json").is_file():
            raise XdtError(f"{self.folder}: no config.json beside {ONNX_FILE} (labels come from it)")
        self.config = AutoConfig.from_pretrained(str(self.folder))
        manifest = self.folder / MANIFEST
        self.manifest = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        self.session = session(self.folder / ONNX_FILE, threads)
        names = [i.name for i in self.session.get_inputs()]
        if names[:1] != ["input_ids"]:
            raise XdtError(f"{self.folder / ONNX_FILE}: inputs {names}; expected input_ids and attention_mask")
        self.input_names = names

    @property
    def quantization(self) -> str | None:
        return self.manifest.get("quantization")

    def eval(self) -> OnnxTokenClassifier:
        return self

    def logits(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64)}
        if "attention_mask" in self.input_names:
            feeds["attention_mask"] = np.ascontiguousarray(attention_mask, dtype=np.int64)
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
        return self.session.run([OUTPUT], feeds)[0]

    def __call__(self, input_ids, attention_mask=None, **_) -> _Output:
        ids = input_ids.cpu().numpy() if isinstance(input_ids, torch.Tensor) else np.asarray(input_ids)
        if attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = attention_mask.cpu().numpy() if isinstance(attention_mask, torch.Tensor) else attention_mask
        return _Output(torch.from_numpy(self.logits(ids, mask)))
