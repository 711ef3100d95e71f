"""The model a deployment step starts from: a token-classification HF folder (or a run folder holding one)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from xdt.errors import XdtError


@contextmanager
def no_progress_bars():
    """transformers' loading/saving bars off: a deployment step prints its result, and errors stay one line."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_token_model(src: Path):
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(str(src))
    archs = config.architectures or []
    if not any(a.endswith("ForTokenClassification") for a in archs):
        raise XdtError(f"{src}/config.json: architectures {archs} has no *ForTokenClassification model; "
                       "deployment handles token-classification (NER) models")
    try:
        with no_progress_bars():
            model, info = AutoModelForTokenClassification.from_pretrained(str(src), use_safetensors=True,
                                                                          output_loading_info=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise XdtError(f"{src}: cannot load a token-classification model: {err}") from None
    if info.get("missing_keys"):
        raise XdtError(f"{src}: weights missing from the checkpoint ({sorted(info['missing_keys'])[:3]}); "
                       "expected a complete token-classification model")
    return model.eval()


def model_folder(model: str | Path) -> Path:
    from xdt.engine.safe_load import check_safetensors
    from xdt.models.export import find_model_folder

    folder = find_model_folder(model)
    check_safetensors(folder)  # a truncated weights file is one line, not safetensors' traceback
    return folder


def load_tokenizer_for(src: Path, tokenizer: str | Path | None):
    from xdt.data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(tokenizer or src)
    except XdtError as err:
        if tokenizer is None:
            raise XdtError(f"{err} (the model folder has no usable tokenizer; pass --tokenizer DIR)") from None
        raise
