"""Loading the HF `wikiann` dataset: from the hub (online), a `save_to_disk` folder, or parquet files."""

from __future__ import annotations

import logging
from pathlib import Path

from xdt.data.sentence import HF_WIKIANN_LABEL_ORDER
from xdt.errors import DataError

log = logging.getLogger(__name__)

HF_SPLIT_NAMES = {"dev": "validation", "validation": "validation", "valid": "validation",
                  "train": "train", "test": "test"}


def hf_split_name(split: str) -> str:
    return HF_SPLIT_NAMES.get(split, split)


def _label_names(dataset, where: str) -> tuple[str, ...]:
    feature = dataset.features.get("ner_tags")
    inner = getattr(feature, "feature", None)
    names = getattr(inner, "names", None)
    if names:
        return tuple(names)
    # Integer tags without ClassLabel metadata (parquet written without its schema): the only order they can
    # have come from is the HF wikiann builder's, which declares these names.
    log.warning("%s: ner_tags carry no ClassLabel names; using the HF wikiann order %s", where,
                " ".join(HF_WIKIANN_LABEL_ORDER))
    return HF_WIKIANN_LABEL_ORDER


def parquet_files(folder: Path, split: str) -> list[Path]:
    """Parquet files of one split under `folder`: `{split}*.parquet` or `{split}/*.parquet` (hub conversion)."""
    hf_split = hf_split_name(split)
    found: list[Path] = []
    for name in {split, hf_split}:
        found += sorted(folder.glob(f"{name}-*.parquet")) + sorted(folder.glob(f"{name}.parquet"))
        found += sorted(folder.glob(f"{name}/*.parquet"))
    return sorted(set(found))


def load_hf_split(source: str | Path, split: str):
    """(Dataset, label names, description of where it came from) for one split."""
    import datasets

    hf_split = hf_split_name(split)
    text = str(source)
    if text.startswith("hf:"):
        name, _, config = text[3:].partition("/")
        try:
            ds = datasets.load_dataset(name, config or None, split=hf_split)
        except Exception as err:  # hub errors come in many types; say what failed and why, keep the cause
            raise DataError(text, f"cannot load split {hf_split!r} of HF dataset {name!r} (config {config!r}) "
                            f"from the hub: {type(err).__name__}: {err}. Offline, save it with "
                            "save_to_disk or as parquet and pass that path.") from err
        return ds, _label_names(ds, text), text

    path = Path(source)
    if not path.exists():
        raise DataError(path, "not found; expected a save_to_disk folder, parquet files or hf:NAME/CONFIG")
    if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if hf_split not in loaded:
                raise DataError(path, f"dataset has no split {hf_split!r}; splits: {', '.join(loaded)}")
            ds = loaded[hf_split]
        else:
            ds = loaded
        return ds, _label_names(ds, str(path)), str(path)

    files = [path] if path.is_file() else parquet_files(path, split)
    if not files:
        raise DataError(path, f"no parquet files for split {split!r} ({hf_split}-*.parquet or {hf_split}/*.parquet)")
    for f in files:
        with f.open("rb") as fh:
            if fh.read(4) != b"PAR1":
                raise DataError(f, "not a parquet file (no PAR1 magic)")
    ds = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train")
    return ds, _label_names(ds, str(path)), str(path)
