"""The typed config of `xdt transfer build`, loaded from YAML with dotted overrides (the loader of xdt.config).

    cfg = load_transfer_config("configs/transfer/wikiann_codeswitch.yaml", ["sampling.size=100000", "seed=3"])

`recipe:` names an augmentation recipe (a file of `multilingual/augmentation/`, or a YAML path); its mapping is the
base of `augment:`, which the config (and overrides) may change key by key. Every problem is one ConfigError that
starts with the dotted key.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from xdt.config import DataFormat, apply_override, build, check_paths, to_dict
from xdt.errors import ConfigError


def _path(**kw):
    """A path field: `xdt.config.check_paths` checks that it exists (relative to the cwd or the project root)."""
    return field(metadata={"path": True}, **kw)


@dataclass
class SourceConfig:
    """One source of sentences. `text`: unlabeled text; `labeled`: WikiAnn files (any reader format) whose labels
    are stripped for the transfer set (and kept for the augmented labeled output)."""

    path: str = _path(default="")
    kind: Literal["text", "labeled"] = "text"
    name: str | None = None  # written in each line's `source`; default: the file or folder name
    weight: float = 1.0  # multiplies the source's sentence counts in sampling (2.0: counts twice)
    lang: str | None = None  # language of lines that do not name one
    langs: list[str] | None = None  # only these languages of the source; None: all
    # text folders: files named by this template, `{lang}` (ISO 639-1) or `{iso3}` (Tatoeba/LASER code),
    # e.g. `tatoeba.{iso3}-eng.{iso3}`; a text file needs no pattern
    pattern: str | None = None
    # labeled sources: reader format (None: detected) and split of a WikiAnn folder
    format: DataFormat | None = None
    split: str = "train"
    any_tags: bool = False  # accept any IOB tag, not only the WikiAnn set


@dataclass
class SamplingConfig:
    """Language sampling: p_l proportional to n_l ** alpha (n_l: weighted sentence count of language l after
    filters and de-duplication), as mBERT (alpha 0.7) and XLM (0.5); alpha 1 keeps the natural shares, 0 is
    uniform."""

    size: int | None = None  # sentences to sample; None: every sentence (after filters, de-dup and caps) once
    alpha: float = 0.7
    caps: dict[str, int] = field(default_factory=dict)  # language -> at most this many sampled sentences
    max_per_lang: int | None = None  # a cap for every language
    upsample: bool = False  # a language may get more than it has (sentences repeat); False: its share is capped
    langs: list[str] | None = None  # only these languages; None: all languages of the sources


@dataclass
class FilterConfig:
    min_words: int = 1
    max_words: int = 200
    # exact: identical words; normalized: NFKC, casefold, whitespace and punctuation removed (per language)
    dedup: Literal["none", "exact", "normalized"] = "normalized"


@dataclass
class CodeSwitchConfig:
    """Replace words by their dictionary translation into other languages (MUSE en-X dictionaries; a non-English
    word pivots through English: X -> en by the inverted en-X dictionary, then en -> Y)."""

    rate: float = 0.0  # augmented copies per sampled sentence (1.5: one copy, and a second one half the time)
    word_ratio: float = 0.3  # fraction of the sentence's words to replace (among those with a translation)
    targets: list[str] | None = None  # languages to switch into; None: every language with a dictionary
    choose: Literal["sentence", "word"] = "sentence"  # one target language per sentence, or one per word
    missing_dictionary: Literal["skip", "error"] = "skip"  # a sentence language without dictionary


@dataclass
class MaskConfig:
    """TinyBERT/BERT-style word masking."""

    rate: float = 0.0
    word_ratio: float = 0.15
    token: str = "[MASK]"


@dataclass
class ReplaceConfig:
    """Replace words by random words of the same language (drawn from a bounded reservoir of the sources)."""

    rate: float = 0.0
    word_ratio: float = 0.15
    vocab_sentences: int = 5000  # reservoir of sentences per language the replacement words come from


@dataclass
class MlmConfig:
    """Replace words by a masked-LM teacher's predictions (TinyBERT): needs `resources.mlm`."""

    rate: float = 0.0
    word_ratio: float = 0.15
    top_k: int = 8
    batch_size: int = 32
    max_length: int = 128
    device: str = "cpu"


@dataclass
class AugmentConfig:
    keep_original: bool = True  # write every sampled sentence as it is (augmentation `none`)
    labeled_output: bool = True  # augmented sentences of labeled sources, with tags, also go to labeled.jsonl
    # labeled input: `keep` never changes a word inside an entity (tag other than O), so the tags stay right;
    # `change` lets every augmentation change entity words too (one word for one word: the tags stay aligned)
    entities: Literal["keep", "change"] = "keep"
    codeswitch: CodeSwitchConfig = field(default_factory=CodeSwitchConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    replace: ReplaceConfig = field(default_factory=ReplaceConfig)
    mlm: MlmConfig = field(default_factory=MlmConfig)


@dataclass
class ResourcesConfig:
    dictionaries: str | None = _path(default=None)  # folder of MUSE files en-{lang}.txt
    dictionary_files: dict[str, str] = field(default_factory=dict)  # lang -> en-{lang} file, beside the folder
    mlm: str | None = _path(default=None)  # local HF masked-LM folder (config, weights, tokenizer)


@dataclass
class OutputConfig:
    shuffle: bool = True  # shuffle on disk (random buckets of at most ~bucket_lines lines each)
    bucket_lines: int = 50000
    tmp_dir: str | None = None  # scratch space for de-dup and shuffle; None: inside the output folder


@dataclass
class TransferConfig:
    seed: int = 0
    sources: list[SourceConfig] = field(default_factory=list)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    recipe: str | None = None  # multilingual/augmentation/{recipe}.yaml or a YAML file; the base of `augment`
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


# ------------------------------------------------------------------------------------------------ loading


def resolve_path(value: str | Path) -> Path:
    """A path as given when it exists, else relative to the project root (as `check_paths` accepts it)."""
    path = Path(value)
    if path.exists() or path.is_absolute():
        return path
    from xdt.assets import project_root

    rooted = project_root() / path
    return rooted if rooted.exists() else path


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        resolved = resolve_path(path)
        if not resolved.is_file():
            raise ConfigError(f"recipe: file {recipe!r} not found")
        return resolved
    from xdt.assets import project_root

    folder = project_root() / "multilingual" / "augmentation"
    candidate = folder / f"{recipe}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"recipe: no recipe {recipe!r} in {folder}; known: {', '.join(known) or 'none'}")
    return candidate


def load_recipe(recipe: str) -> dict:
    """The `augment` mapping of a recipe file (its top level, or its `augment:` key)."""
    path = recipe_path(recipe)
    data = _read_yaml(path)
    data = data.get("augment", data)
    data = {k: v for k, v in data.items() if k not in ("name", "description")}
    build(AugmentConfig, data, "recipe")  # type-check the recipe itself, naming it
    return data


def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
    return loaded


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_transfer_config(path: str | Path | None = None, overrides: list[str] | None = None,
                         data: dict | None = None, check: bool = True) -> TransferConfig:
    """From a YAML file (or a dict), then `dotted.key=value` overrides, then the recipe under `augment`."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        data = _read_yaml(path)
    data = copy.deepcopy(data or {})
    overrides = list(overrides or [])
    # `recipe=` overrides first: the recipe is the base that the other `augment.*` values change
    for override in [o for o in overrides if o.partition("=")[0].strip() == "recipe"]:
        apply_override(data, override)
        overrides.remove(override)
    recipe = data.get("recipe")
    if recipe is not None:
        if not isinstance(recipe, str):
            raise ConfigError(f"recipe: expected a recipe name or YAML path, got {recipe!r}")
        augment = data.get("augment") or {}
        if not isinstance(augment, dict):
            raise ConfigError(f"augment: expected a mapping of keys to values, got {type(augment).__name__}")
        data["augment"] = _merge(load_recipe(recipe), augment)
    if overrides:
        full = to_dict(build(TransferConfig, data))
        for override in overrides:
            apply_override(full, override)
        data = full
    cfg = build(TransferConfig, data)
    if check:
        check_transfer_config(cfg)
    return cfg


def check_transfer_config(cfg: TransferConfig) -> None:
    """Checks beyond each field's type; paths must exist."""
    if not cfg.sources:
        raise ConfigError("sources: empty; list at least one source (path, kind text or labeled)")
    check_paths(cfg)
    names = set()
    for i, src in enumerate(cfg.sources):
        key = f"sources.{i}"
        if not src.path:
            raise ConfigError(f"{key}.path: missing; every source names a file or folder")
        if src.weight <= 0:
            raise ConfigError(f"{key}.weight: expected a positive number, got {src.weight}")
        if src.pattern is not None and "{lang}" not in src.pattern and "{iso3}" not in src.pattern:
            raise ConfigError(f"{key}.pattern: {src.pattern!r} names no language; use {{lang}} or {{iso3}}")
        if src.kind == "labeled" and src.pattern is not None:
            raise ConfigError(f"{key}.pattern: only for text sources; labeled folders are found by their layout")
        name = source_name(src)
        if name in names:
            raise ConfigError(f"{key}.name: {name!r} names two sources; give each a distinct name")
        names.add(name)
    s = cfg.sampling
    if s.size is not None and s.size <= 0:
        raise ConfigError(f"sampling.size: expected a positive integer or null, got {s.size}")
    if not 0.0 <= s.alpha <= 1.0:
        raise ConfigError(f"sampling.alpha: expected a number in [0, 1], got {s.alpha}")
    for lang, cap in s.caps.items():
        if cap < 0:
            raise ConfigError(f"sampling.caps.{lang}: expected a count >= 0, got {cap}")
    if s.max_per_lang is not None and s.max_per_lang <= 0:
        raise ConfigError(f"sampling.max_per_lang: expected a positive integer or null, got {s.max_per_lang}")
    f = cfg.filters
    if f.min_words < 1 or f.max_words < f.min_words:
        raise ConfigError(f"filters.min_words: expected 1 <= min_words ({f.min_words}) <= max_words "
                          f"({f.max_words})")
    a = cfg.augment
    for name in ("codeswitch", "mask", "replace", "mlm"):
        step = getattr(a, name)
        if step.rate < 0:
            raise ConfigError(f"augment.{name}.rate: expected a number >= 0, got {step.rate}")
        if not 0.0 < step.word_ratio <= 1.0:
            raise ConfigError(f"augment.{name}.word_ratio: expected a number in (0, 1], got {step.word_ratio}")
    if not a.keep_original and not any(getattr(a, n).rate > 0 for n in ("codeswitch", "mask", "replace", "mlm")):
        raise ConfigError("augment.keep_original: false with every augmentation rate 0 would write nothing")
    if a.codeswitch.rate > 0 and cfg.resources.dictionaries is None and not cfg.resources.dictionary_files:
        raise ConfigError("resources.dictionaries: augment.codeswitch.rate > 0 needs MUSE dictionaries "
                          "(a folder of en-{lang}.txt files, or resources.dictionary_files)")
    if a.mlm.rate > 0 and cfg.resources.mlm is None:
        raise ConfigError("resources.mlm: augment.mlm.rate > 0 needs a local masked-LM folder")
    if a.mlm.top_k < 1 or a.mlm.batch_size < 1 or a.mlm.max_length < 3:
        raise ConfigError("augment.mlm: expected top_k >= 1, batch_size >= 1, max_length >= 3")
    if a.replace.vocab_sentences < 1:
        raise ConfigError(f"augment.replace.vocab_sentences: expected >= 1, got {a.replace.vocab_sentences}")
    for lang, file in cfg.resources.dictionary_files.items():
        if not resolve_path(file).is_file():
            raise ConfigError(f"resources.dictionary_files.{lang}: file {file!r} not found")
    if cfg.output.bucket_lines < 1:
        raise ConfigError(f"output.bucket_lines: expected a positive integer, got {cfg.output.bucket_lines}")


def source_name(src: SourceConfig) -> str:
    return src.name or Path(src.path).name or str(src.path)
