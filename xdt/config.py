"""Typed run configuration: dataclasses, loaded from YAML, with dotted command-line overrides.

    cfg = load_config("configs/quickstart.yaml", ["student.hidden_size=256", "stages.0.lr=1e-4"])

Every problem is one `ConfigError` whose message starts with the dotted key: an unknown key (with the keys that
exist), a value of the wrong type, a value outside its choices, or a path that does not exist. Override values are
parsed as YAML (`256` is an int, `true` a bool, `[de,en]` a list, `null` None). Numbers written as `1e-4`, which
YAML 1.1 reads as strings, are accepted for float fields.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from xdt.assets import project_root
from xdt.errors import SYMLINK_LOOP, ConfigError, XdtError, is_symlink_loop

# The paper's strategies (XtremeDistil, ACL 2020, Table 3), expanded into `stages` once, when a RunConfig is built.
# Representations and logits are learnt on the transfer set (unlabeled), labels on the labeled data; a joint stage
# (data: both) takes one batch of each per step. `distill.attention_loss` adds an attention term of weight 1 beside
# every preset `hidden` term (the paper's optional attention loss in S1).
Strategy = Literal["D0-S", "D1", "D2", "D3.1", "D3.2", "D4.1", "D4.2"]
STRATEGIES: dict[str, list[tuple[str, str, dict[str, float], bool]]] = {
    # name: [(stage name, data, loss weights, gradual unfreeze)]
    "D0-S": [("labels", "labeled", {"labels": 1.0}, False)],
    "D1": [("joint", "both", {"logits": 1.0, "labels": 1.0}, False)],
    "D2": [("joint", "both", {"hidden": 1.0, "logits": 1.0, "labels": 1.0}, False)],
    "D3.1": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits+labels", "both", {"logits": 1.0, "labels": 1.0}, False)],
    "D3.2": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits+labels", "both", {"logits": 1.0, "labels": 1.0}, True)],
    "D4.1": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits", "transfer", {"logits": 1.0}, False),
             ("labels", "labeled", {"labels": 1.0}, False)],
    "D4.2": [("representations", "transfer", {"hidden": 1.0}, False),
             ("logits", "transfer", {"logits": 1.0}, True),
             ("labels", "labeled", {"labels": 1.0}, True)],
}
assert tuple(STRATEGIES) == typing.get_args(Strategy)

# The data formats of xdt.data.readers (text: unlabeled); every list of them (config types, flags) is this one
DataFormat = Literal["xtreme", "raw", "xtremedistil", "hf", "text"]
DATA_FORMATS: tuple[str, ...] = typing.get_args(DataFormat)
LABELED_FORMATS: tuple[str, ...] = tuple(f for f in DATA_FORMATS if f != "text")

# The loss terms a stage may weigh; those read from the teacher; those that train the classifier (after a stage
# with one of these the dev score means something)
LOSS_TERMS = ("hidden", "attention", "logits", "labels")
TEACHER_TERMS = ("hidden", "attention", "logits")
OUTPUT_TERMS = ("logits", "labels")

# The released XtremeDistilTransformers shapes (../shared/reference): layers, hidden, heads, intermediate.
STUDENT_PRESETS: dict[str, dict[str, int]] = {
    "l6-h256": {"num_layers": 6, "hidden_size": 256, "num_heads": 8, "intermediate_size": 1024},
    "l6-h384": {"num_layers": 6, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536},
    "l12-h384": {"num_layers": 12, "hidden_size": 384, "num_heads": 12, "intermediate_size": 1536},
}

MOCK = "mock"  # data.path / tokenizer.path value: xdt generates the data or the vocabulary itself


def _path(must_exist: bool = True, allow_empty: bool = False, **kw):
    """A field holding a path; checked by `check_paths` unless it says `mock`. An empty path is refused (it would
    mean the working directory) unless `allow_empty` gives it a meaning."""
    return field(metadata={"path": must_exist, "empty": allow_empty}, **kw)


@dataclass
class MockDataConfig:
    """Synthetic WikiAnn-format data in several languages and scripts, for the offline quickstart."""

    langs: list[str] = field(default_factory=lambda: ["en", "de", "ru", "ar", "hi"])
    train_sentences: int = 400
    dev_sentences: int = 100
    test_sentences: int = 100
    seed: int = 0


@dataclass
class DataConfig:
    path: str = _path(default=MOCK)  # a data folder or file (any format of xdt.data.readers), or `mock`
    task: Literal["token", "sequence"] = "token"  # sequence: text<TAB>label / a<TAB>b<TAB>label files
    labels: list[str] | None = None  # label order of a sequence task; None: the sorted train labels
    format: DataFormat | None = None  # None: detect
    langs: list[str] | None = None  # None: every language found
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    transfer: str | None = _path(default=None)  # transfer set (xdt transfer build), None: labeled train text
    max_seq_length: int = 128
    limit: int = 0  # > 0: the first N sentences per language of train and dev (quick runs, tests); 0: all
    dev_limit: int | None = None  # > 0: the first N dev sentences per language (model selection); None: `limit`
    strict: bool = False  # fail on malformed lines instead of skipping them
    cache_dir: str | None = None  # None: $XDT_CACHE or ~/.cache/xdt
    mock: MockDataConfig = field(default_factory=MockDataConfig)


@dataclass
class TokenizerConfig:
    path: str = _path(default=MOCK)  # folder with tokenizer.json / vocab.txt, or `mock`
    mock_vocab_size: int = 4000  # size of the WordPiece vocabulary trained on the mock data


@dataclass
class TeacherConfig:
    model: str = _path(default="", allow_empty=True)  # HF folder to fine-tune; empty: a random BERT of this shape
    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    intermediate_size: int = 1024
    dropout: float = 0.1  # hidden and attention dropout of a randomly initialised teacher
    epochs: float = 3.0
    lr: float = 5e-5
    batch_size: int = 32
    warmup_ratio: float = 0.1
    early_stopping_patience: int = 2  # evaluations on dev without improvement before stopping
    eval_every: int = 0  # steps between dev evaluations; 0: once per epoch
    # keep the word-embedding matrix as loaded: with a 250k-piece vocabulary (XLM-R, e5) its dense Adam update is
    # most of a CPU step, and the pieces a small fine-tuning set never sees would not move anyway
    freeze_embeddings: bool = False
    trust_remote_code: bool = False


@dataclass
class StudentConfig:
    preset: Literal["l6-h256", "l6-h384", "l12-h384"] | None = None  # sets the four shape fields below
    num_layers: int = 2
    hidden_size: int = 128
    num_heads: int = 2
    intermediate_size: int = 512
    embedding_size: int | None = None  # E < H: factorized word embeddings; None: E = H
    embedding_init: Literal["svd", "pca", "random", "teacher"] = "svd"  # pca: svd of the centred matrix
    freeze_embeddings: bool = False
    dropout: float = 0.1  # hidden and attention dropout of the student
    init_from: str | None = _path(default=None)  # a pretrained student folder instead of building one


@dataclass
class StageConfig:
    name: str = "stage"
    data: Literal["transfer", "labeled", "both"] = "transfer"  # both: distillation terms on transfer batches,
    # the labels term on labeled batches drawn alongside (the paper's joint strategies D1, D2, D3.x stage 2)
    losses: dict[str, float] = field(default_factory=lambda: {"logits": 1.0})  # term -> weight
    epochs: float = 1.0  # of the stage's data, per unfreeze step when gradual_unfreeze
    steps: int = 0  # > 0: optimizer steps instead of epochs (per unfreeze step when gradual_unfreeze)
    gradual_unfreeze: bool = False  # top-down, layer by layer: head, projection, top layer ... embeddings
    lr: float = 1e-4
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = 0


@dataclass
class DistillConfig:
    strategy: Strategy | None = "D4.2"  # None: the explicit `stages`
    layer_map: Literal["top", "uniform"] | list[int] = "top"
    logit_loss: Literal["mse", "kl"] = "mse"
    temperature: float = 1.0
    attention_loss: Literal["none", "mse", "kl"] = "none"
    projection_dropout: float = 0.1
    # where the hidden-state and logit terms count: every real token (the papers) or each word's first sub-word
    positions: Literal["tokens", "words"] = "tokens"  # words wherever the teacher has its own tokenizer
    # a teacher with another tokenizer (found in teacher.model's folder): its outputs are brought to each word from
    # the word's first sub-word or the mean of its sub-words, on its own tokenization (xdt.data.word_bridge)
    word_pooling: Literal["first", "mean"] = "first"
    mask_padding: bool = True  # the released code also averages over padding; see docs/deviations.md
    batch_size: int = 32
    # what a strategy preset gives each of its stages (explicit `stages` set their own)
    epochs: float = 2.0  # per stage, or per unfreeze step of a stage that unfreezes gradually
    steps: int = 0  # > 0: optimizer steps instead of epochs (per stage / unfreeze step)
    # > 0: the steps of the presets' representation stage alone (D3.x, D4.x). It trains every layer at once and the
    # gradual stages start from it: where the student's embeddings start far from the teacher's (another
    # vocabulary), a budget per unfreeze step is too short for it
    representation_steps: int = 0
    # 1e-3 is the ACL 2020 BiLSTM students' rate; Transformer students train at 3e-5..1e-4 with decay (the
    # released XtremeDistilTransformers code), restarted by every unfreeze step's new optimizer
    lr: float = 1e-4
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_steps: int = 0
    # dev evaluations inside an unfreeze step (steps); 0: at its end only. The best one is kept (exported when it
    # beats every earlier one) and restored before the next unfreeze step when the step ends worse
    eval_every: int = 0
    # teacher outputs cached by `xdt teacher cache` (logits, and the hidden states `cache_layers` names; None:
    # those the layer map pairs); stages they cover read them and the teacher is not loaded for them
    teacher_cache: str | None = None
    cache_layers: list[int] | None = None
    cache_dtype: Literal["float16", "float32"] = "float16"


@dataclass
class DeepSpeedConfig:
    config: str = _path(default="ds_configs/zero2.json")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_accumulation_steps: int = 1
    gradient_clipping: float = 1.0
    # ZeRO-3 only: teacher and student are built partitioned (deepspeed.zero.Init), no rank holds a whole model;
    # false builds them whole and lets deepspeed.initialize partition them (kept to compare against)
    zero_init: bool = True


@dataclass
class OutputConfig:
    dir: str = "runs/quickstart"
    checkpoint_every: int = 0  # steps; 0: only at the end of every stage and unfreeze step
    keep_last: int = 2  # complete checkpoints kept per loop (teacher, distill); 0 keeps all
    resume: Literal["never", "auto"] = "never"  # auto: continue from the newest complete checkpoint
    stop_file: str = "STOP"  # under output.dir: `touch` it and the run saves and stops at its next step
    tensorboard: bool = True


@dataclass
class EvalConfig:
    suite: str | None = None  # a suite of eval/, e.g. wikiann41; None: data.langs
    split: str = "test"
    batch_size: int = 64


def _slurm(default, help: str, *, step: bool = False, training: bool = False, minimum: int | None = None,
           sbatch: bool = False, metavar: str | None = None, flag: str | None = None):
    """A field of SlurmResources. `step`: also a key of `slurm.<step>`; `training`: a flag of training jobs only;
    `minimum`: the least value of an int; `sbatch`: given, it becomes the line `#SBATCH --<flag>=<value>` of every
    script; a list default makes a repeatable flag."""
    meta = {"help": help, "step": step, "training": training, "minimum": minimum, "sbatch": sbatch,
            "metavar": metavar, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SlurmResources:
    """What a SLURM job asks for, each option declared once: a field here is a flag of `xdt slurm submit|eval|pipeline`
    (help and checks from its metadata) and, where `step`, a key of `slurm.<step>` in a run config."""

    nodes: int = _slurm(1, "nodes (1)", step=True, minimum=1)
    gpus_per_node: int = _slurm(0, "GPUs per node; 0: CPU only, gloo (0)", step=True, minimum=0)
    cpus_per_task: int = _slurm(1, "CPUs per task (1); CPU-only training starts this many single-threaded ranks per "
                                   "node", step=True, minimum=1)
    ntasks_per_node: int = _slurm(1, "1: one task per node running torchrun (default); N > 1: srun starts N ranks per "
                                     "node", step=True, minimum=1)
    procs_per_node: int | None = _slurm(None, "torchrun --nproc_per_node (default: the GPUs per node, else "
                                              "--cpus-per-task)", step=True, training=True, minimum=1)
    signal_seconds: int = _slurm(300, "USR1 this many seconds before the time limit: save and requeue (300)",
                                 training=True, minimum=1)
    port: int | None = _slurm(None, "rendezvous port (default 10000 + job id %% 20000, below the ephemeral ports)",
                              training=True)
    # in YAML quoted: "04:00:00" (an unquoted 4:00:00 is read as a number of seconds)
    time: str | None = _slurm(None, "time limit, e.g. 04:00:00 or 2-00:00:00 (default: the partition's)", step=True,
                              sbatch=True)
    partition: str | None = _slurm(None, "partition (default: the cluster's)", step=True, sbatch=True)
    account: str | None = _slurm(None, "account to charge", step=True, sbatch=True)
    job_name: str | None = _slurm(None, "job name (default: xdt-<command>-<output folder name>)")
    python: str | None = _slurm(None, "Python on the compute nodes with xdt installed (default: this one)")
    setup: list[str] = _slurm([], "shell line run before the launch, e.g. 'module load cuda' (repeatable)",
                              metavar="LINE")
    env: list[str] = _slurm([], "variable exported in the job (repeatable)", metavar="NAME=VALUE")
    sbatch_options: list[str] = _slurm([], "extra #SBATCH line, e.g. --qos=high (repeatable)", metavar="--OPT=VALUE",
                                       flag="--sbatch-option")


def slurm_flag(f: dataclasses.Field) -> str:
    """The command-line flag of a SlurmResources field."""
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


# What one step of `xdt slurm pipeline` asks for: the `step` fields of SlurmResources, each None by default (a null
# key takes the common setting: the command line's flags, then slurm.partition/account, then the defaults).
SlurmStepConfig = dataclasses.make_dataclass(
    "SlurmStepConfig", [(f.name, f"{f.type} | None" if "None" not in f.type else f.type, field(default=None))
                        for f in dataclasses.fields(SlurmResources) if f.metadata["step"]])
SlurmStepConfig.__module__ = __name__  # its string annotations are read in this module


@dataclass
class SlurmConfig:
    """Resources of the jobs `xdt slurm pipeline` submits (nothing else reads this section)."""

    partition: str | None = None
    account: str | None = None
    eval_shards: int = 1  # array tasks of the evaluation, each scoring every N-th language
    teacher: SlurmStepConfig = field(default_factory=SlurmStepConfig)
    cache: SlurmStepConfig = field(default_factory=SlurmStepConfig)
    distill: SlurmStepConfig = field(default_factory=SlurmStepConfig)
    eval: SlurmStepConfig = field(default_factory=SlurmStepConfig)


@dataclass
class RunConfig:
    seed: int = 42
    # torch's CPU threads per process; 0: torch's default (one per core). Small models gain nothing from more, and
    # with other jobs on the cores the extra threads spin: the quickstart took 335 s of CPU on 2 under load, 34 s on 1
    threads: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    stages: list[StageConfig] = field(default_factory=list)  # explicit when distill.strategy is None, else its own
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # `xdt slurm pipeline` only; not part of what a run computes
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self) -> None:  # every reader takes `stages`: the preset is expanded here, once
        check_attention_loss(self.distill, self.stages)
        if self.distill.strategy is not None:
            self.stages = strategy_stages(self.distill.strategy, self.distill)


def strategy_stages(name: str, distill: DistillConfig) -> list[StageConfig]:
    """A preset's stages with the distill section's budget, rate, schedule and attention term."""
    def losses(terms: dict[str, float]) -> dict[str, float]:
        add = distill.attention_loss != "none" and terms.get("hidden", 0) > 0
        return {**terms, "attention": 1.0} if add else dict(terms)

    def steps(stage: str) -> int:
        return distill.representation_steps if stage == "representations" and distill.representation_steps \
            else distill.steps

    return [StageConfig(name=stage, data=data, losses=losses(terms), epochs=distill.epochs, steps=steps(stage),
                        gradual_unfreeze=gradual, lr=distill.lr, schedule=distill.schedule,
                        warmup_steps=distill.warmup_steps)
            for stage, data, terms, gradual in STRATEGIES[name]]


# --------------------------------------------------------------------------------------------- building


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        deeper = [e for e in errors if str(e).startswith(key + ".")]  # the value had the right shape, not content
        if deeper:
            raise deeper[0]
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [_coerce(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            k_tp, v_tp = typing.get_args(tp)
            return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return build(tp, value, key)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def build(cls: type, data: dict, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a (nested) dict, every value type-checked."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or '<root>'}: expected a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key; expected one of {', '.join(names)}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_override(data: dict, override: str) -> None:
    """`a.b.c=value` into nested dict `data` (list items by index: `stages.0.lr=1e-4`)."""
    key, eq, text = override.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"{override!r}: expected an override of the form dotted.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"{key}: cannot parse value {text!r}: {err}") from None
    parts = key.split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            node = _list_item(node, part, here)
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"{here}: is a {type(node).__name__}, cannot set {key} inside it")
    last = parts[-1]
    if isinstance(node, list):
        _list_item(node, last, key)
        node[int(last)] = value
    else:
        node[last] = value


def _list_item(node: list, part: str, key: str) -> Any:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"{key}: expected a list index below {len(node)}")
    return node[int(part)]


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                check: bool = True) -> RunConfig:
    data: dict = {}
    explicit_student: set[str] = set()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
        if isinstance(data.get("student"), dict):
            explicit_student |= set(data["student"])
    if overrides:
        # overrides address the defaults too (`stages.0.lr` needs the list to exist): start from the full tree
        built = build(RunConfig, data)
        full = to_dict(built)
        if built.distill.strategy is not None:  # its preset's stages: `distill.strategy=null` must not inherit them
            full["stages"] = data.get("stages", [])
        for override in overrides:
            apply_override(full, override)
            if override.startswith("student."):
                explicit_student.add(override.partition("=")[0].split(".")[1])
        data = full
    cfg = build(RunConfig, data)
    _apply_student_preset(cfg.student, explicit_student)
    if check:
        check_config(cfg)
    return cfg


def _apply_student_preset(student: StudentConfig, explicit: set[str]) -> None:
    if student.preset is None:
        return
    for key, value in STUDENT_PRESETS[student.preset].items():
        if key in explicit and getattr(student, key) != value:
            raise ConfigError(f"student.{key}: {getattr(student, key)} contradicts student.preset {student.preset} "
                              f"({key} {value}); set one or the other")
        setattr(student, key, value)


def check_paths(cfg: Any, prefix: str = "") -> None:
    """Every path field that is set (and not `mock`) must exist."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            check_paths(value, dotted)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                check_paths(item, f"{dotted}.{i}")
        elif "path" in f.metadata and value is not None and not str(value).strip() and not f.metadata["empty"]:
            raise ConfigError(f"{dotted}: empty path; expected a file or folder" + (" or 'mock'" if value == ""
                              and f.default == MOCK else "") + (" (null for none)" if f.default is None else ""))
        elif "path" in f.metadata and value and is_symlink_loop(value):
            raise ConfigError(f"{dotted}: {value!r} is {SYMLINK_LOOP}; expected a file or folder")
        elif f.metadata.get("path") and value and value != MOCK and not str(value).startswith("hf:"):
            if not Path(value).exists() and not _project_relative(value).exists():
                raise ConfigError(f"{dotted}: path {value!r} does not exist")


def _project_relative(value: str) -> Path:
    return project_root() / value


# Numeric ranges (dotted key -> (lowest, lowest allowed?, highest or None, highest allowed?)): checked at load, so a
# negative learning rate or a zero batch size is one line before any work, not an error deep in torch.
_POSITIVE = (0, False, None, False)
_NON_NEGATIVE = (0, True, None, False)
_FRACTION = (0, True, 1, False)  # dropout
RANGES = {
    **dict.fromkeys(("data.max_seq_length", "student.num_layers", "student.hidden_size", "student.num_heads",
                     "student.intermediate_size", "teacher.num_layers", "teacher.hidden_size", "teacher.num_heads",
                     "teacher.intermediate_size", "teacher.batch_size", "teacher.lr", "distill.batch_size",
                     "distill.lr", "distill.temperature", "eval.batch_size", "deepspeed.gradient_accumulation_steps",
                     "tokenizer.mock_vocab_size", "data.mock.train_sentences", "data.mock.dev_sentences",
                     "data.mock.test_sentences"), _POSITIVE),
    "threads": _NON_NEGATIVE,
    **dict.fromkeys(("teacher.epochs", "teacher.eval_every", "teacher.early_stopping_patience", "distill.epochs",
                     "distill.steps", "distill.representation_steps", "distill.warmup_steps", "distill.eval_every",
                     "data.limit", "data.dev_limit", "output.checkpoint_every", "output.keep_last",
                     "deepspeed.gradient_clipping"), _NON_NEGATIVE),
    **dict.fromkeys(("teacher.dropout", "student.dropout", "distill.projection_dropout"), _FRACTION),
    "teacher.warmup_ratio": (0, True, 1, True),
}
SLURM_STEPS = ("teacher", "cache", "distill", "eval")
RANGES |= {"slurm.eval_shards": _POSITIVE,
           **{f"slurm.{step}.{f.name}": _POSITIVE if f.metadata["minimum"] == 1 else _NON_NEGATIVE
              for step in SLURM_STEPS for f in dataclasses.fields(SlurmResources)
              if f.metadata["step"] and f.metadata["minimum"] is not None}}
STAGE_RANGES = {"lr": _POSITIVE, "epochs": _NON_NEGATIVE, "steps": _NON_NEGATIVE, "warmup_steps": _NON_NEGATIVE}


def _check_range(key: str, value, bounds) -> None:
    low, low_ok, high, high_ok = bounds
    if value is None:
        return
    fine = (value > low or (low_ok and value == low)) and (high is None or value < high or (high_ok and value == high))
    if not fine:  # NaN fails every comparison and lands here too
        kind = "integer" if isinstance(value, int) else "number"
        want = {_POSITIVE: f"a positive {kind}", _NON_NEGATIVE: f"a non-negative {kind}"}.get(
            bounds, f"a number in {'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}")
        raise ConfigError(f"{key}: expected {want}, got {value}")


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_config(cfg: RunConfig) -> None:
    """Checks across fields, beyond what each field's type says."""
    check_paths(cfg)
    if not cfg.output.dir.strip():
        raise ConfigError("output.dir: empty; expected the run's folder (it would be the working directory)")
    for key in ("output.dir", "data.cache_dir", "distill.teacher_cache"):  # folders a run writes
        if _get(cfg, key) and is_symlink_loop(_get(cfg, key)):
            raise ConfigError(f"{key}: {_get(cfg, key)!r} is {SYMLINK_LOOP}; expected a folder")
    for key in ("data.langs", "data.mock.langs"):
        if _get(cfg, key) == []:
            raise ConfigError(f"{key}: empty list; expected language codes such as [de, en]"
                              + (" (null: every language found)" if key == "data.langs" else ""))
    for key, bounds in RANGES.items():
        _check_range(key, _get(cfg, key), bounds)
    for i, stage in enumerate(cfg.stages):
        for key, bounds in STAGE_RANGES.items():
            _check_range(f"stages.{i}.{key}", getattr(stage, key), bounds)
        for term, weight in stage.losses.items():
            _check_range(f"stages.{i}.losses.{term}", weight, _NON_NEGATIVE)
    read_ds_file(cfg.deepspeed.config)  # its shape, before any engine is built
    if cfg.data.max_seq_length < 3:
        raise ConfigError(f"data.max_seq_length: expected at least 3, got {cfg.data.max_seq_length}")
    for who in ("teacher", "student"):
        sub = getattr(cfg, who)
        if sub.hidden_size % sub.num_heads:
            raise ConfigError(f"{who}.hidden_size: {sub.hidden_size} is not divisible by {who}.num_heads "
                              f"{sub.num_heads}")
    e = cfg.student.embedding_size
    if e is not None and not 0 < e <= cfg.student.hidden_size:
        raise ConfigError(f"student.embedding_size: expected 1..{cfg.student.hidden_size} (student.hidden_size), "
                          f"got {e}")
    if cfg.distill.teacher_cache and cfg.distill.attention_loss != "none":
        raise ConfigError("distill.teacher_cache: attention maps are not cached; set distill.attention_loss: none "
                          "or run the teacher on the fly (distill.teacher_cache: null)")
    if cfg.data.task == "sequence":
        for key, value in (("data.path", cfg.data.path), ("tokenizer.path", cfg.tokenizer.path)):
            if value == MOCK:
                raise ConfigError(f"{key}: mock data is NER only; data.task sequence reads text<TAB>label or "
                                  "a<TAB>b<TAB>label files and a real tokenizer")
        if cfg.distill.teacher_cache:
            raise ConfigError("distill.teacher_cache: caches per-token outputs (NER); data.task sequence runs the "
                              "teacher on the fly (distill.teacher_cache: null)")
    for step in SLURM_STEPS:
        time = getattr(cfg.slurm, step).time
        if time is not None:
            try:
                time_seconds(time)
            except XdtError as err:
                raise ConfigError(f"slurm.{step}.time: {str(err).partition(': ')[2]}") from None
    if cfg.distill.strategy is None and not cfg.stages:
        raise ConfigError("stages: empty while distill.strategy is null; name a strategy or list the stages")
    # no stage of no length: it used to become one optimizer step per phase and a run that trained nothing
    if cfg.distill.strategy is not None and cfg.distill.epochs <= 0 and cfg.distill.steps <= 0:
        raise ConfigError(f"distill.epochs: {cfg.distill.epochs:g} trains no stage of strategy {cfg.distill.strategy}; "
                          "expected a positive number of epochs (or distill.steps > 0)")
    for i, stage in enumerate(cfg.stages if cfg.distill.strategy is None else []):
        if stage.epochs <= 0 and stage.steps <= 0:
            raise ConfigError(f"stages.{i}.epochs: {stage.epochs:g} trains nothing in stage {stage.name!r}; expected "
                              f"a positive number of epochs (or stages.{i}.steps > 0)")

def check_attention_loss(distill: DistillConfig, stages: list[StageConfig]) -> None:
    """Refuse a `distill.attention_loss` that no stage would use: the presets add it beside every `hidden` term
    (none in D0-S, D1); explicit `stages` must weigh it themselves."""
    if distill.attention_loss == "none":
        return
    if distill.strategy is not None:
        if not any(losses.get("hidden", 0) > 0 for _, _, losses, _ in STRATEGIES[distill.strategy]):
            raise ConfigError(f"distill.attention_loss: is {distill.attention_loss!r} but strategy "
                              f"{distill.strategy} has no representation (hidden) stage to add the attention term "
                              "to; choose a strategy with one (D2, D3.1, D3.2, D4.1, D4.2) or set "
                              "distill.attention_loss: none")
    elif not any(s.losses.get("attention", 0) > 0 for s in stages):
        raise ConfigError(f"distill.attention_loss: is {distill.attention_loss!r} but no stage of `stages` "
                          "gives the attention term a positive weight; add `attention: 1.0` to the losses of a "
                          "stage (e.g. the one with `hidden`) or set distill.attention_loss: none")


def resolve_ds_path(path: str) -> Path:
    p = Path(path)
    if p.exists():
        return p
    if (project_root() / p).exists():
        return project_root() / p
    raise ConfigError(f"deepspeed.config: {path!r} does not exist")


def read_ds_file(path: str | Path) -> dict:
    """The JSON of a DeepSpeed config file, with the shape xdt relies on checked: an object, sections that are
    objects, and a ZeRO stage that is an integer 0..3 (DeepSpeed itself would fail deep inside initialize)."""
    path = resolve_ds_path(str(path))
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"deepspeed.config: {path} is not valid JSON: {err}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"deepspeed.config: {path} holds a JSON {type(ds).__name__}; expected an object of "
                          "DeepSpeed settings")
    for key in ("zero_optimization", "bf16", "fp16", "optimizer", "scheduler"):
        if key in ds and not isinstance(ds[key], dict):
            raise ConfigError(f"deepspeed.config: {path}: {key} is a {type(ds[key]).__name__}; expected an object")
    zero = ds.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.config: {path}: zero_optimization.stage is {stage!r}; expected the integer "
                          "0, 1, 2 or 3")
    for key in ("offload_optimizer", "offload_param"):
        if key in zero and not isinstance(zero[key], dict):
            raise ConfigError(f"deepspeed.config: {path}: zero_optimization.{key} is a {type(zero[key]).__name__}; "
                              "expected an object")
    if stage == 0 and ("offload_optimizer" in zero or "offload_param" in zero):
        raise ConfigError(f"deepspeed.config: {path} offloads on ZeRO stage 0; offload needs stage 1-3 "
                          "(parameters: stage 3)")
    if "offload_param" in zero and stage != 3:
        raise ConfigError(f"deepspeed.config: {path} offloads parameters on ZeRO stage {stage}; only stage 3 can")
    return ds


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_seconds(spec: str) -> int | None:
    """Seconds in a SLURM --time value (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None for UNLIMITED/INFINITE."""
    if spec.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(spec)
    if not m:
        raise XdtError(f"--time {spec!r}: expected minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = (parts + [0, 0])[:3]
        return int(days) * 86400 + h * 3600 + mi * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return parts[0] * 3600 + parts[1] * 60 + parts[2]
