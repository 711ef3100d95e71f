"""What `xdt eval` takes: each field of EvalOptions is one flag of the command (xdt.options), and the object
`evaluate` runs with. Kept apart from xdt.eval.run so that building the CLI imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from xdt.config import LABELED_FORMATS
from xdt.errors import XdtError
from xdt.eval.suites import SCHEMES
from xdt.languages import parse_langs
from xdt.options import option


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise XdtError(f"--shard {spec!r}: expected i/n, e.g. 0/4 (0-based index i < n)") from None
    if count < 1 or not 0 <= index < count:
        raise XdtError(f"--shard {spec!r}: expected 0 <= i < n (0-based, as $SLURM_ARRAY_TASK_ID from 0)")
    return index, count


@dataclass
class EvalOptions:
    model: str = option(help="model folder (config.json, model.safetensors, tokenizer files), or an ONNX folder of "
                             "`xdt export --format onnx` (run with onnxruntime on the CPU)")
    data: list[str] = option(help="WikiAnn folder or file in any supported layout; repeat for several folders",
                             repeat=True, metavar="PATH")
    out: str = option(help="output folder (must not exist or be empty unless --overwrite)")
    teacher: str | None = option(None, "teacher model folder, evaluated on the same data (teacher F1, retention)")
    compare: str | None = option(None, "take the teacher column from an earlier report", metavar="REPORT.json")
    suite: str | None = option(None, "suite name in eval/ (e.g. wikiann41) or a suite YAML file")
    langs: list[str] | None = option(None, "comma-separated languages (a subset of --suite when both are given); "
                                           "default: the suite's, else every language found", type=parse_langs)
    split: str | None = option(None, "train, dev or test (default: the suite's split, else test)")
    format: str | None = option(None, "default: detected", choices=LABELED_FORMATS)
    scheme: str | None = option(None, "strict-mode scheme (default: the suite's, else IOB2)", choices=SCHEMES)
    tokenizer: str | None = option(None, "tokenizer folder when the model folder has none")
    teacher_tokenizer: str | None = option(None, "tokenizer folder when the teacher folder has none")
    batch_size: int = option(64, "windows per batch (64)", type=int)
    # the teacher column is scored with the same windows
    max_seq_length: int | None = option(None, "sub-words per window, specials included (default: the length the "
                                              "model was trained with, recorded by xdt in its config.json as "
                                              "xdt_max_seq_length; else 128); longer sentences are windowed",
                                        type=int)
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    dtype: str = option("auto", "auto (bf16 on CUDA with bf16, fp32 on CPU), fp32, bf16, fp16")
    precision: str = option("auto", "a plain BERT on the CPU: fp32, or bf16 matrix products with every word they "
                                    "could mislabel recomputed in fp32 (the fp32 labels, faster); auto: bf16 where "
                                    "the CPU has native bf16 dot products (AVX512-BF16, AMX), else fp32",
                            choices=("auto", "fp32", "bf16"))
    threads: int | None = option(None, "CPU threads for inference (default: torch's; on a shared node set it to the "
                                       "cores you were given)", type=int)
    shard: tuple[int, int] | None = option(None, "evaluate share I (0-based) of N of the languages, e.g. "
                                                 "$SLURM_ARRAY_TASK_ID/4", type=parse_shard, metavar="I/N")
    allow_missing: bool = option(False, "evaluate the languages found and list the others as missing (default: "
                                        "error)", switch=True)
    max_sentences: int | None = option(None, "first N sentences per language (quick checks); recorded in the "
                                             "report", type=int)
    # aligned-feature cache; None: no cache (the command's default is $XDT_CACHE or ~/.cache/xdt, --no-cache: none)
    cache_dir: str | None = option(None, "aligned-feature cache (default $XDT_CACHE or ~/.cache/xdt)")
    progress: bool = option(True, "no progress bars", flag="--no-progress", switch=True)
    overwrite: bool = option(False, "replace a non-empty --out (never one that is, holds or lies inside an input)",
                             switch=True)
