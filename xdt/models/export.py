"""`xdt export`: a trained student as a standard HF folder that loads with no xdt import.

The folder holds safetensors weights, a config with `id2label`/`label2id` (ELECTRA's `embedding_size` for
factorized students) and the tokenizer files. The export is checked by reloading it with plain transformers and
comparing logits on a probe batch with the source model's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from xdt.errors import XdtError

TASK_CLASSES = {"token": "AutoModelForTokenClassification", "sequence": "AutoModelForSequenceClassification"}


def checkpoint_tag(checkpoint: str | Path) -> tuple[Path, str] | None:
    """(checkpoint root, tag) when `checkpoint` is a DeepSpeed checkpoint of xdt's: a root with `latest`, or a
    tag folder with its completion marker."""
    from xdt.engine.checkpoint import MARKER, Checkpointer

    path = Path(checkpoint)
    if (path / MARKER).exists():
        return path.parent, path.name
    for root in (path, path / "checkpoints" / "distill"):
        found = Checkpointer(root).latest() if (root / "latest").exists() else None
        if found:
            return root, found[0]
    return None


def consolidate(root: Path, tag: str):
    """The student of a DeepSpeed checkpoint (any ZeRO stage, shards of every rank) through zero_to_fp32, in the
    architecture of the run's saved student (`student_best/config.json`)."""
    import transformers
    from transformers import AutoConfig

    from xdt.engine.checkpoint import Checkpointer

    run_dir = root.parent.parent
    model_dir = run_dir / ("teacher" if root.name == "teacher" else "student_best")
    if not (model_dir / "config.json").is_file():
        raise XdtError(f"{root}: no {model_dir}/config.json to rebuild the model from")
    config = AutoConfig.from_pretrained(str(model_dir))
    state = Checkpointer(root).consolidated(tag)  # torch.load(weights_only=True): nothing pickled runs
    prefix = "student." if root.name != "teacher" else ""
    weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model = getattr(transformers, TASK_CLASSES[_task(config)]).from_config(config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shapes that differ from the saved config
        raise XdtError(f"{root / tag}: checkpoint does not fit {model_dir}/config.json "
                       f"({' '.join(str(err).split())[:300]})") from None
    missing = [k for k in missing if k not in getattr(model, "_tied_weights_keys", None) or []]
    if missing or unexpected:
        raise XdtError(f"{root / tag}: checkpoint does not fit {model_dir}/config.json "
                       f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval(), model_dir


def find_model_folder(checkpoint: str | Path) -> Path:
    """The HF folder inside what a user calls a checkpoint: a run folder or the model folder itself."""
    path = Path(checkpoint)
    if not path.exists():
        raise XdtError(f"{path}: checkpoint not found")
    for candidate in (path, path / "student_best", path / "hf", path / "student"):
        if (candidate / "config.json").is_file() and any(candidate.glob("*.safetensors")):
            return candidate
    from xdt.engine.safe_load import PICKLED_WEIGHTS, check_model_weights

    if (path / "config.json").is_file() and any(p.suffix in PICKLED_WEIGHTS for p in path.iterdir()):
        check_model_weights(path)  # pickled weights only: named, unopened
    raise XdtError(f"{path}: no HF model folder here (expected config.json with *.safetensors in it, or in its "
                   "student_best/ or hf/ subfolder)")


def export_source(checkpoint: str | Path) -> tuple[Path, tuple[Path, str] | None]:
    """What `xdt export CHECKPOINT` exports: (model folder, None) or (checkpoint tag folder, (root, tag)).

    A run folder gives its best dev model, `student_best/` (the model `xdt run` exports and scores), not the
    newest DeepSpeed checkpoint, which holds the weights of the last step whatever their dev score. Only a run
    without `student_best/` falls back to its newest checkpoint; a checkpoint root or tag folder named explicitly
    gives exactly that checkpoint."""
    path = Path(checkpoint)
    if not (path / "config.json").exists() and not (path / "student_best" / "config.json").is_file():
        tagged = checkpoint_tag(path)
        if tagged is not None:
            return tagged[0] / tagged[1], tagged
    return find_model_folder(path), None


def _task(config) -> str:
    archs = " ".join(config.architectures or [])
    return "sequence" if "SequenceClassification" in archs else "token"


def export_model(checkpoint: str | Path, out: str | Path, tokenizer_dir: str | Path | None = None,
                 overwrite: bool = False) -> Path:
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from xdt.data.tokenizer import check_vocabulary
    from xdt.engine.safe_load import check_safetensors
    from xdt.outputs import check_out, staged_folder

    inputs = [checkpoint, tokenizer_dir]  # `xdt export RUN --out RUN --overwrite` would delete the run
    out = check_out(out, overwrite, inputs)
    src, tagged = export_source(checkpoint)
    if tagged is not None:  # a DeepSpeed checkpoint (ZeRO-3 included): consolidated through zero_to_fp32
        model, src = consolidate(*tagged)
        config = model.config
    else:
        check_safetensors(src)
        config = AutoConfig.from_pretrained(str(src))
    generic = all(str(v).startswith("LABEL_") for v in (config.id2label or {}).values())
    if not config.id2label or generic:
        raise XdtError(f"{src}/config.json: id2label is missing or generic ({config.id2label}); the export needs "
                       "label names")
    auto = getattr(transformers, TASK_CLASSES[_task(config)])
    tok_src = Path(tokenizer_dir) if tokenizer_dir else src
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tok_src))
    except (OSError, ValueError) as err:
        raise XdtError(f"{tok_src}: no tokenizer to export with the model ({err}); pass --tokenizer DIR") from err
    check_vocabulary(tokenizer, config.vocab_size, src, tok_src)  # the reload check would index beyond the table
    if tagged is None:
        model = auto.from_pretrained(str(src), use_safetensors=True).eval()

    with staged_folder(out, overwrite, inputs) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _check_reload(model, tokenizer, tmp, auto)
    return out


def _check_reload(model, tokenizer, folder: Path, auto) -> None:
    probe = tokenizer(["xdt export check", "a"], padding=True, return_tensors="pt")
    reloaded = auto.from_pretrained(str(folder), use_safetensors=True).eval()
    with torch.no_grad():
        a = model(**{k: probe[k] for k in ("input_ids", "attention_mask")}).logits
        b = reloaded(**{k: probe[k] for k in ("input_ids", "attention_mask")}).logits
    if not torch.equal(a, b):
        raise XdtError(f"{folder}: the exported model does not reproduce the source's logits "
                       f"(max difference {float((a - b).abs().max()):.3g})")
