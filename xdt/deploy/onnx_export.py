"""`xdt export --format onnx [--quantize int8]`: a token-classification model as an ONNX graph, checked against
PyTorch before anything is written.

Top to bottom:
1. load the HF folder (or the one inside a run folder) and its tokenizer;
2. export `(input_ids, attention_mask) -> logits` with torch's exporter (`torch.onnx.export(dynamo=True)`),
   batch and length dynamic, opset 18 (the exporter's own opset; onnxruntime >= 1.14 runs it);
3. parity: run PyTorch and onnxruntime on real sentences (16 built-in ones in 13 languages, plus the
   first sentences per language of --data), windowed and padded as `xdt eval` feeds them; print the max |logit
   difference| over real tokens and the argmax agreement; refuse above `tolerance`;
4. `--quantize int8`: onnxruntime's dynamic quantization (int8 weights for MatMul and Gather, activations
   quantized per batch at run time), its own agreement with PyTorch measured the same way and refused below
   `int8_min_agreement`; the F1 cost per language is what `xdt eval` on the folder (or benchmarks/deploy.py)
   reports;
5. the folder: model.onnx, config.json (labels), tokenizer files, onnx.json (parity figures, opset, versions),
   written to a hidden sibling and renamed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from xdt.data.sentence import Sentence
from xdt.data.tokenizer import check_vocabulary
from xdt.deploy.onnx_predictor import (
    INPUTS,
    MANIFEST,
    ONNX_FILE,
    OUTPUT,
    import_onnxruntime,
    onnx_parameters,
    session,
)
from xdt.deploy.probe import first_sentences, probe_batches, probe_sentences
from xdt.deploy.source import load_token_model, load_tokenizer_for, model_folder, no_progress_bars
from xdt.outputs import check_out, staged_folder
from xdt.errors import XdtError

OPSET = 18
QUANTIZATIONS = ("int8",)
DEFAULT_TOLERANCE = 1e-4  # fp32 graphs differ from PyTorch by float rounding, ~1e-6 on logits of a few units
DEFAULT_INT8_AGREEMENT = 0.95


class _Logits(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_graph(model: torch.nn.Module, path: Path, opset: int = OPSET) -> None:
    """`model` (eval mode) -> ONNX at `path`, one file, batch and length dynamic."""
    import_onnxruntime()
    try:
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise XdtError("ONNX export needs onnx and onnxscript: pip install 'xdt[deploy]'") from None
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    ids = torch.full((2, 8), 5, dtype=torch.long)  # sizes 2 and 8: 0 and 1 would be specialised as constants
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    quiet = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(_Logits(model), (ids, mask), str(path), dynamo=True, external_data=False,
                              input_names=list(INPUTS), output_names=[OUTPUT], opset_version=opset,
                              dynamic_shapes={"input_ids": {0: batch, 1: length},
                                              "attention_mask": {0: batch, 1: length}},
                              verbose=False)
    except Exception as err:  # the exporter's errors come from many layers (torch.export, onnxscript)
        raise XdtError(f"torch's ONNX exporter failed on this model: {type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else ''}") from None
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights (MatMul, Gather), activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True)


@torch.no_grad()
def compare(model: torch.nn.Module, graph: Path, tokenizer, sentences: list[Sentence], max_seq_length: int = 128,
            threads: int | None = None) -> dict:
    """PyTorch vs onnxruntime on the same padded batches: max |logit diff| and argmax agreement over real tokens."""
    sess = session(graph, threads)
    names = {i.name for i in sess.get_inputs()}
    max_diff, tokens, same = 0.0, 0, 0
    for ids, mask in probe_batches(tokenizer, sentences, max_seq_length):
        reference = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
        feeds = {"input_ids": ids, "attention_mask": mask} if "attention_mask" in names else {"input_ids": ids}
        got = sess.run([OUTPUT], feeds)[0]
        real = mask.astype(bool)
        max_diff = max(max_diff, float(np.abs(got - reference)[real].max()))
        tokens += int(real.sum())
        same += int((got.argmax(-1) == reference.argmax(-1))[real].sum())
    return {"sentences": len(sentences), "tokens": tokens, "max_abs_logit_diff": max_diff,
            "argmax_agreement": same / tokens if tokens else None}


def parity_sentences(data: list[str] | None, langs: list[str] | None, split: str | None, fmt: str | None,
                     per_lang: int) -> list[Sentence]:
    sentences = probe_sentences()
    if data:
        from xdt.data.discover import read_split
        from xdt.data.readers import ReadOptions

        for path in data:
            for by_lang in read_split(path, split, langs, fmt, ReadOptions(labels=None)).values():
                sentences += first_sentences(by_lang, per_lang)
    return sentences


def export_onnx(model: str | Path, out: str | Path, *, quantize: str | None = None,
                tokenizer: str | Path | None = None, data: list[str] | None = None, langs: list[str] | None = None,
                split: str | None = "test", fmt: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                int8_min_agreement: float = DEFAULT_INT8_AGREEMENT, opset: int = OPSET, per_lang: int = 32,
                max_seq_length: int = 128, overwrite: bool = False) -> dict:
    """Write the ONNX folder to `out` and return its manifest (also `out/onnx.json`)."""
    with no_progress_bars():
        return _export(model, out, quantize, tokenizer, data, langs, split, fmt, tolerance, int8_min_agreement,
                       opset, per_lang, max_seq_length, overwrite)


def _export(model, out, quantize, tokenizer, data, langs, split, fmt, tolerance, int8_min_agreement, opset, per_lang,
            max_seq_length, overwrite) -> dict:
    t0 = time.perf_counter()
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise XdtError(f"--quantize {quantize}: expected one of {', '.join(QUANTIZATIONS)}")
    if not tolerance >= 0:
        raise XdtError(f"--tolerance {tolerance}: expected a non-negative number")
    if not 0 <= int8_min_agreement <= 1:
        raise XdtError(f"--int8-min-agreement {int8_min_agreement}: expected a fraction between 0 and 1")
    inputs = [model, tokenizer, *(data or [])]
    check_out(out, overwrite, inputs)
    src = model_folder(model)
    torch_model = load_token_model(src).float()
    tok = load_tokenizer_for(src, tokenizer)
    check_vocabulary(tok, torch_model.config.vocab_size, src, tokenizer or src)
    sentences = parity_sentences(data, langs, split, fmt, per_lang)
    limit = getattr(torch_model.config, "max_position_embeddings", 512)
    if torch_model.config.model_type in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    max_seq_length = min(max_seq_length, limit)

    with tempfile.TemporaryDirectory(prefix="xdt-onnx-") as work, staged_folder(out, overwrite, inputs) as tmp:
        fp32 = Path(work) / "model.fp32.onnx"
        export_graph(torch_model, fp32, opset)
        parity = {"fp32": compare(torch_model, fp32, tok, sentences, max_seq_length)}
        if parity["fp32"]["max_abs_logit_diff"] > tolerance:
            raise XdtError(f"ONNX parity check failed: max |logit diff| {parity['fp32']['max_abs_logit_diff']:.3g} "
                           f"> tolerance {tolerance:g} (argmax agreement "
                           f"{parity['fp32']['argmax_agreement']:.2%}) on {len(sentences)} sentences; nothing written")
        if quantize == "int8":
            quantize_int8(fp32, tmp / ONNX_FILE)
            parity["int8"] = compare(torch_model, tmp / ONNX_FILE, tok, sentences, max_seq_length)
            if parity["int8"]["argmax_agreement"] < int8_min_agreement:
                raise XdtError(f"int8 parity check failed: argmax agreement {parity['int8']['argmax_agreement']:.2%} "
                               f"< {int8_min_agreement:.0%} with PyTorch on {len(sentences)} sentences; nothing "
                               "written (lower --int8-min-agreement to accept it)")
        else:
            fp32.rename(tmp / ONNX_FILE)
        torch_model.config.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        manifest = {
            "format": "onnx", "file": ONNX_FILE, "quantization": quantize, "opset": opset,
            "inputs": list(INPUTS), "output": OUTPUT, "dynamic_axes": {"0": "batch", "1": "length"},
            "source": str(src), "parameters": onnx_parameters(tmp / ONNX_FILE),
            "torch_parameters": sum(p.numel() for p in torch_model.parameters()),
            "bytes": (tmp / ONNX_FILE).stat().st_size, "tolerance": tolerance,
            "int8_min_agreement": int8_min_agreement if quantize else None,
            "parity": parity, "parity_data": {"builtin_sentences": len(probe_sentences()), "data": data,
                                              "langs": langs, "split": split, "per_lang": per_lang},
            "versions": _versions(), "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    manifest["out"] = str(out)
    return manifest


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def summary_line(manifest: dict) -> str:
    p = manifest["parity"]
    parts = [f"fp32 max |logit diff| {p['fp32']['max_abs_logit_diff']:.2g}, argmax agreement "
             f"{p['fp32']['argmax_agreement']:.2%}"]
    if "int8" in p:
        parts.append(f"int8 max |logit diff| {p['int8']['max_abs_logit_diff']:.2g}, argmax agreement "
                     f"{p['int8']['argmax_agreement']:.2%}")
    kind = "int8" if manifest["quantization"] else "fp32"
    return (f"exported {manifest['source']} -> {manifest['out']}/{ONNX_FILE} (ONNX opset {manifest['opset']}, {kind}, "
            f"{manifest['bytes'] / 1e6:.1f} MB); parity on {p['fp32']['sentences']} sentences, "
            f"{p['fp32']['tokens']} tokens: " + "; ".join(parts))
