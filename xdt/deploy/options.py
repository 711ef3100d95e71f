"""What `xdt export` and `xdt trim` take: each field is one flag of the command (xdt.options)."""

from __future__ import annotations

from dataclasses import dataclass

from xdt.config import DATA_FORMATS
from xdt.languages import parse_langs
from xdt.options import option


@dataclass
class ExportOptions:
    checkpoint: str = option(help="run output folder, checkpoint folder or HF model folder", positional=True)
    out: str = option(help="folder to write (must not exist unless --overwrite)", required=True)
    tokenizer: str | None = option(None, "tokenizer folder, when the checkpoint holds none")
    overwrite: bool = option(False, "replace a non-empty --out", switch=True)
    format: str = option("hf", "hf: safetensors folder (default); onnx: model.onnx for onnxruntime, checked against "
                               "PyTorch (from an HF folder or a run folder; export a DeepSpeed checkpoint to hf "
                               "first)", choices=("hf", "onnx"))
    quantize: str | None = option(None, "onnx: dynamic int8 quantization (onnxruntime)", choices=("int8",))
    data: list[str] = option([], "onnx: also check parity on the first sentences per language of this WikiAnn path",
                             repeat=True, metavar="PATH")
    langs: list[str] | None = option(None, "onnx: languages of --data (default: every language found)",
                                     type=parse_langs)
    split: str = option("test", "onnx: split of --data (test)")
    tolerance: float = option(1e-4, "onnx: refuse when the fp32 graph's max |logit diff| from PyTorch exceeds this "
                                    "(1e-4)", type=float)
    int8_min_agreement: float = option(0.95, "onnx int8: refuse below this argmax agreement with PyTorch (0.95)",
                                       type=float)


@dataclass
class TrimOptions:
    model: str = option(help="HF token-classification folder (student or teacher) or run folder", positional=True)
    data: list[str] = option(help="corpus: WikiAnn folder or file in any supported layout, or text; repeat for "
                                  "several", repeat=True, required=True, metavar="PATH")
    out: str = option(help="folder to write (must not exist or be empty unless --overwrite)", required=True)
    langs: list[str] | None = option(None, "comma-separated languages to keep (default: every language found)",
                                     type=parse_langs)
    split: str | None = option(None, "train, dev or test (default: every split found)")
    format: str | None = option(None, "default: detected", choices=DATA_FORMATS)
    floor: str = option("chars", "chars (default): also keep every single-character piece of the scripts served",
                        choices=("chars", "none"))
    floor_min_share: float = option(0.001, "a script is served when it has at least this share of the corpus's "
                                           "characters (0.001)", type=float)
    tokenizer: str | None = option(None, "tokenizer folder, when the model folder holds none")
    overwrite: bool = option(False, "replace a non-empty --out", switch=True)
