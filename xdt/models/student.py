"""Students that keep the teacher's (mBERT) vocabulary, built as plain transformers models.

E == H: a BERT (`BertForTokenClassification` / `BertForSequenceClassification`).
E <  H: factorized word embeddings as ELECTRA's `embedding_size` (`ElectraFor...`, which projects E -> H by
`electra.embeddings_project`), so an exported student loads with `AutoModelForTokenClassification` and nothing
from xdt. Starting points (StudentConfig.embedding_init / init_from):

- ``svd``: word embeddings = top-E SVD projection of the teacher's word-embedding matrix, the rest random;
- ``pca``: the same on the centred matrix (top-E principal components, as the released code's scikit-learn PCA);
- ``random``: everything random (transformers' init);
- ``teacher``: embeddings, encoder layers (by a layer map) and head copied from the teacher; a narrower
  feed-forward block keeps the most important units, factorized embeddings the top-E singular directions;
- a teacher with another vocabulary: `teacher_word_embeddings` is its matrix mapped onto the student's pieces
  (`xdt.models.vocab_map`), for ``svd``/``pca`` and ``teacher`` alike;
- ``init_from``: a pretrained student folder (safetensors only: pickled weights can run code when loaded).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (AutoModelForSequenceClassification, AutoModelForTokenClassification, BertConfig,
                          BertForSequenceClassification, BertForTokenClassification, ElectraConfig,
                          ElectraForSequenceClassification, ElectraForTokenClassification, PretrainedConfig,
                          PreTrainedModel)

from xdt.config import STUDENT_PRESETS, StudentConfig
from xdt.engine.zero3 import build_model, from_pretrained, gathered
from xdt.errors import ConfigError
from xdt.models.embeddings import svd_components, svd_compress
from xdt.models.layer_map import LayerMapSpec, teacher_layers_to_copy

log = logging.getLogger(__name__)

Task = Literal["token", "sequence"]
_SHAPE_KEYS = ("num_layers", "hidden_size", "num_heads", "intermediate_size")


@dataclass(frozen=True)
class StudentShape:
    """The resolved student architecture (preset applied, embedding size filled in)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int
    embedding_size: int

    @property
    def factorized(self) -> bool:
        return self.embedding_size < self.hidden_size


def student_shape(cfg: StudentConfig) -> StudentShape:
    """Resolve `cfg.preset` and check the shape; user errors raise `ConfigError` naming the `student.` key.

    `load_config` already copies a preset into the shape fields; a StudentConfig built in code may not have, so
    the preset wins over fields still at their dataclass default and contradicts any other value.
    """
    values = {k: getattr(cfg, k) for k in _SHAPE_KEYS}
    if cfg.preset is not None:
        if cfg.preset not in STUDENT_PRESETS:
            raise ConfigError(f"student.preset: expected one of {', '.join(STUDENT_PRESETS)}, got {cfg.preset!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(StudentConfig)}
        for k, preset_value in STUDENT_PRESETS[cfg.preset].items():
            if values[k] not in (preset_value, defaults[k]):
                raise ConfigError(f"student.{k}: {values[k]} contradicts student.preset {cfg.preset} "
                                  f"({k} {preset_value}); set one or the other")
            values[k] = preset_value
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(f"student.{k}: expected a positive integer, got {v!r}")
    if values["hidden_size"] % values["num_heads"]:
        raise ConfigError(f"student.hidden_size: {values['hidden_size']} is not divisible by student.num_heads "
                          f"{values['num_heads']}")
    e = values["hidden_size"] if cfg.embedding_size is None else cfg.embedding_size
    if isinstance(e, bool) or not isinstance(e, int) or not 0 < e <= values["hidden_size"]:
        raise ConfigError(f"student.embedding_size: expected 1..{values['hidden_size']} (student.hidden_size), "
                          f"got {e!r}")
    return StudentShape(embedding_size=e, **values)


def label_maps(labels: Sequence[str]) -> dict:
    """`num_labels`, `id2label`, `label2id` keyword arguments for a transformers config."""
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be a non-empty list of distinct names, got {labels}")
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def student_hf_config(shape: StudentShape, *, vocab_size: int, labels: Sequence[str], pad_token_id: int = 0,
                      max_position_embeddings: int = 512, type_vocab_size: int = 2,
                      dropout: float = 0.1, attention_dropout: float | None = None) -> PretrainedConfig:
    """A `BertConfig` (E == H) or an `ElectraConfig` with `embedding_size=E` (E < H).

    `dropout` is the hidden dropout, and the attention dropout unless `attention_dropout` is given."""
    attention_dropout = dropout if attention_dropout is None else attention_dropout
    common = dict(vocab_size=vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=attention_dropout,
                  num_attention_heads=shape.num_heads, intermediate_size=shape.intermediate_size,
                  hidden_act="gelu", max_position_embeddings=max_position_embeddings,
                  type_vocab_size=type_vocab_size, pad_token_id=pad_token_id, **label_maps(labels))
    if shape.factorized:
        return ElectraConfig(embedding_size=shape.embedding_size, **common)
    return BertConfig(**common)


def model_class(config: PretrainedConfig, task: Task) -> type[PreTrainedModel]:
    """The transformers class for a BERT/ELECTRA config and a task (per-token or per-sequence labels)."""
    classes = {("bert", "token"): BertForTokenClassification, ("bert", "sequence"): BertForSequenceClassification,
               ("electra", "token"): ElectraForTokenClassification,
               ("electra", "sequence"): ElectraForSequenceClassification}
    if task not in ("token", "sequence"):
        raise ValueError(f"task must be 'token' or 'sequence', got {task!r}")
    return classes[(config.model_type, task)]


def build_student(cfg: StudentConfig, *, vocab_size: int, labels: Sequence[str], task: Task = "token",
                  teacher: PreTrainedModel | None = None, teacher_word_embeddings: torch.Tensor | None = None,
                  copy_layer_map: LayerMapSpec = "uniform", center: bool = False, pad_token_id: int = 0,
                  attn_implementation: str | None = None,
                  attention_dropout: float | None = None) -> PreTrainedModel:
    """The student `cfg` describes, initialised as `cfg.embedding_init` / `cfg.init_from` say.

    `vocab_size` is the tokenizer's (the teacher's mBERT vocabulary). `teacher` (or just its word-embedding matrix
    `teacher_word_embeddings`) is needed for ``svd``; ``teacher`` init needs the model and picks teacher layers
    with `copy_layer_map` (default every k-th). ``pca`` (or `center`) centres the matrix before the SVD.
    `attn_implementation="eager"` is needed when an attention loss reads the attention maps (sdpa does not return
    them); pass `attention_dropout=0.0` with it: transformers returns the maps after attention dropout, so in
    training mode the student's maps would be noisy targets of the loss (the hidden dropout, `cfg.dropout`, stays).
    None keeps `cfg.dropout` (a folder of `cfg.init_from` keeps its own).
    With `cfg.freeze_embeddings` the word embeddings get ``requires_grad=False``.
    Called inside `xdt.engine.zero3.zero3_build` the student is built partitioned (a partitioned teacher too),
    and every write into it gathers only the parameters it writes: every rank must call this.
    """
    if cfg.init_from:
        model = load_pretrained_student(cfg.init_from, vocab_size=vocab_size, labels=labels, task=task,
                                        attn_implementation=attn_implementation)
        if attention_dropout is not None:
            set_attention_dropout(model, attention_dropout)
    else:
        shape = student_shape(cfg)
        teacher_cfg = teacher.config if teacher is not None else None
        config = student_hf_config(
            shape, vocab_size=vocab_size, labels=labels, pad_token_id=pad_token_id,
            max_position_embeddings=getattr(teacher_cfg, "max_position_embeddings", 512),
            type_vocab_size=getattr(teacher_cfg, "type_vocab_size", 2), dropout=cfg.dropout,
            attention_dropout=attention_dropout)
        model = build_model(model_class(config, task), config)  # partitioned inside zero3_build (ZeRO-3)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        if cfg.embedding_init in ("svd", "pca"):
            if teacher_word_embeddings is None and teacher is not None:
                teacher_word_embeddings = teacher.get_input_embeddings().weight
            if teacher_word_embeddings is None:
                raise ConfigError(f"student.embedding_init: {cfg.embedding_init!r} needs the teacher's word "
                                  "embeddings; pass the teacher or choose 'random'")
            init_word_embeddings_svd(model, teacher_word_embeddings,
                                     center=center or cfg.embedding_init == "pca")
        elif cfg.embedding_init == "teacher":
            if teacher is None:
                raise ConfigError("student.embedding_init: 'teacher' copies teacher weights; no teacher given")
            _check_copyable(shape, teacher.config)
            layers = teacher_layers_to_copy(copy_layer_map, shape.num_layers, teacher.config.num_hidden_layers)
            copy_from_teacher(model, teacher, layers, word_rows=teacher_word_embeddings)
        elif cfg.embedding_init != "random":
            raise ConfigError(f"student.embedding_init: expected 'svd', 'pca', 'random' or 'teacher', "
                              f"got {cfg.embedding_init!r}")
    if attention_dropout is not None:
        log.info("student attention dropout %g (hidden dropout stays %g): an attention loss compares the maps "
                 "transformers returns after attention dropout", attention_dropout,
                 model.config.hidden_dropout_prob)
    if cfg.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    return model


def set_attention_dropout(model: PreTrainedModel, p: float) -> None:
    """Attention-probability dropout `p` in `model.config` and in every self-attention module already built.

    transformers' BERT/ELECTRA attention reads ``self.dropout.p`` of its self-attention module at each forward;
    the hidden-state dropouts (``BertSelfOutput``, ``BertOutput``, embeddings) are left as they are.
    """
    model.config.attention_probs_dropout_prob = p
    for module in model.modules():
        if "SelfAttention" in type(module).__name__ and isinstance(getattr(module, "dropout", None), nn.Dropout):
            module.dropout.p = p


def init_word_embeddings_svd(model: PreTrainedModel, teacher_weight: torch.Tensor, *, center: bool = False) -> None:
    """Overwrite the student's word embeddings [V, E] with the top-E SVD projection of the teacher's [V, D].

    A teacher matrix with more rows than the tokenizer has pieces (padded, e.g. to a multiple of 8) is cut to its
    first V rows, the pieces the tokenizer can produce; fewer rows than pieces is refused.
    """
    student_weight = model.get_input_embeddings().weight
    with gathered(student_weight, write=True), gathered([teacher_weight]):  # no-ops unless partitioned (ZeRO-3)
        _svd_into(student_weight, teacher_weight, center)


def _svd_into(student_weight: torch.Tensor, teacher_weight: torch.Tensor, center: bool) -> None:
    vocab, width = student_weight.shape
    what = "'pca'" if center else "'svd'"
    if teacher_weight.shape[0] < vocab:
        raise ConfigError(f"student.embedding_init: {what} needs the teacher's vocabulary; the teacher has "
                          f"{teacher_weight.shape[0]} word embeddings, fewer than the student's tokenizer's {vocab} "
                          f"pieces; use the teacher's own tokenizer or choose 'random'")
    if teacher_weight.shape[0] > vocab:
        log.info("student.embedding_init %s: the teacher has %d word embeddings, the tokenizer %d pieces; using "
                 "the first %d rows (the rest are padding)", what, teacher_weight.shape[0], vocab, vocab)
        teacher_weight = teacher_weight[:vocab]
    if width > teacher_weight.shape[1]:
        raise ConfigError(f"student.embedding_size: {width} exceeds the teacher's embedding width "
                          f"{teacher_weight.shape[1]}; SVD cannot add directions")
    compressed = svd_compress(teacher_weight.detach().float(), width, center=center)
    with torch.no_grad():
        student_weight.copy_(compressed.to(student_weight.dtype))


def _check_copyable(shape: StudentShape, teacher_config: PretrainedConfig) -> None:
    for key, teacher_key in (("hidden_size", "hidden_size"), ("num_heads", "num_attention_heads")):
        if getattr(shape, key) != getattr(teacher_config, teacher_key):
            raise ConfigError(f"student.{key}: {getattr(shape, key)} differs from the teacher's "
                              f"{getattr(teacher_config, teacher_key)}; student.embedding_init 'teacher' copies "
                              f"attention layers and needs equal widths")
    if shape.intermediate_size > teacher_config.intermediate_size:
        raise ConfigError(f"student.intermediate_size: {shape.intermediate_size} exceeds the teacher's "
                          f"{teacher_config.intermediate_size}; student.embedding_init 'teacher' keeps a subset of "
                          f"the teacher's feed-forward units")


def copy_from_teacher(student: PreTrainedModel, teacher: PreTrainedModel, teacher_layers: Sequence[int],
                      word_rows: torch.Tensor | None = None) -> None:
    """Start the student from the teacher: embeddings, teacher layer `teacher_layers[i]` for student layer i, head.
    `word_rows` [V_student, H]: the word embeddings to start from where the vocabularies differ (else the
    teacher's own rows).

    Where the student is narrower the copy is the best one of its size rather than a refusal:
    - factorized word embeddings (E < H) get the teacher's rows in its top-E singular basis, position and type
      embeddings the same projection, and the E -> H projection maps back (scaled for the E-wide LayerNorm, then
      the teacher's LayerNorm gain and bias), so the embedding output approximates the teacher's;
    - a narrower feed-forward block keeps the teacher's units with the largest ``|w_in| * |w_out|`` (structured
      pruning: each unit's contribution is its input row times its output column);
    - the classification head is copied when its label set has the teacher's size.
    Attention layers are copied as they are (equal hidden size and heads, checked by `_check_copyable`).
    """
    s_base, t_base = student.base_model, teacher.base_model
    if len(teacher_layers) != len(s_base.encoder.layer):
        raise ValueError(f"need one teacher layer per student layer ({len(s_base.encoder.layer)}), "
                         f"got {list(teacher_layers)}")
    for j in teacher_layers:
        if not 0 <= j < len(t_base.encoder.layer):
            raise ConfigError(f"distill.layer_map: teacher layer {j} out of range 0..{len(t_base.encoder.layer) - 1}")
    # part by part, so that under ZeRO-3 only the part being copied is gathered (no-ops otherwise)
    with torch.no_grad():
        if hasattr(s_base, "embeddings_project"):
            with _gathered_pair([s_base.embeddings, s_base.embeddings_project], [t_base.embeddings]):
                _copy_factorized_embeddings(student, teacher, word_rows)
        else:
            with _gathered_pair([s_base.embeddings], [t_base.embeddings]):
                skip = ("word_embeddings.",) if word_rows is not None else ()
                _copy_state(s_base.embeddings, t_base.embeddings, "embeddings", skip=skip)
                if word_rows is not None:
                    s_base.embeddings.word_embeddings.weight.copy_(word_rows)
        for i, j in enumerate(teacher_layers):
            with _gathered_pair([s_base.encoder.layer[i]], [t_base.encoder.layer[j]]):
                _copy_layer(s_base.encoder.layer[i], t_base.encoder.layer[j], f"layer {i} <- teacher layer {j}")
        s_head, t_head = getattr(student, "classifier", None), getattr(teacher, "classifier", None)
        if isinstance(s_head, nn.Linear) and isinstance(t_head, nn.Linear):
            with _gathered_pair([s_head], [t_head]):
                if s_head.weight.shape == t_head.weight.shape:
                    _copy_state(s_head, t_head, "classifier")


@contextmanager
def _gathered_pair(dst: Sequence[nn.Module], src: Sequence[nn.Module]):
    """Full values of `src` to read and of `dst` to write (rank 0's writes kept) inside; no-ops unless partitioned."""
    with gathered([p for m in dst for p in m.parameters()], write=True), \
            gathered([p for m in src for p in m.parameters()]):
        yield


def _copy_state(dst: nn.Module, src: nn.Module, what: str, skip: tuple[str, ...] = ()) -> None:
    src_state = src.state_dict()
    for name, tensor in dst.state_dict().items():
        if name.startswith(skip):
            continue
        if name not in src_state or src_state[name].shape != tensor.shape:
            got = tuple(src_state[name].shape) if name in src_state else "missing"
            raise ConfigError(f"student.embedding_init: cannot copy {what}: {name} is {tuple(tensor.shape)} "
                              f"in the student, {got} in the teacher")
        tensor.copy_(src_state[name])


def _copy_layer(dst: nn.Module, src: nn.Module, what: str) -> None:
    d_in, s_in = dst.intermediate.dense, src.intermediate.dense
    if d_in.out_features == s_in.out_features:
        _copy_state(dst, src, what)
        return
    _copy_state(dst, src, what, skip=("intermediate.", "output.dense.weight"))
    s_out = src.output.dense.weight  # [H, I]
    importance = s_in.weight.norm(dim=1) * s_out.norm(dim=0)
    keep = importance.topk(d_in.out_features).indices.sort().values
    d_in.weight.copy_(s_in.weight[keep])
    d_in.bias.copy_(s_in.bias[keep])
    dst.output.dense.weight.copy_(s_out[:, keep])


def _copy_factorized_embeddings(student: PreTrainedModel, teacher: PreTrainedModel,
                                word_rows: torch.Tensor | None = None) -> None:
    s_emb, t_emb = student.base_model.embeddings, teacher.base_model.embeddings
    project = student.base_model.embeddings_project
    vocab, e = s_emb.word_embeddings.weight.shape
    t_words = (t_emb.word_embeddings.weight if word_rows is None else word_rows)[:vocab].float()
    if t_words.shape[0] < vocab:
        raise ConfigError(f"student.embedding_init: 'teacher' needs the teacher's vocabulary; the teacher has "
                          f"{t_words.shape[0]} word embeddings, the tokenizer {vocab} pieces")
    # the basis of what LayerNorm sees, word + position (+ type) vectors: each table weighted by its row count
    # so that positions (a few hundred rows) count as much as the words (tens of thousands); word rows alone
    # would give a basis that drops most of the position signal
    tables = [t_words] + [getattr(t_emb, n).weight.float() for n in ("position_embeddings", "token_type_embeddings")]
    _, basis = svd_components(torch.cat([t / t.shape[0] ** 0.5 for t in tables]), e)  # [H, E]
    s_emb.word_embeddings.weight.copy_(t_words @ basis)
    for name in ("position_embeddings", "token_type_embeddings"):
        dst, src = getattr(s_emb, name).weight, getattr(t_emb, name).weight
        rows = min(dst.shape[0], src.shape[0])
        dst[:rows].copy_(src[:rows].float() @ basis)
    # LayerNorm over E coordinates gives vectors of norm ~sqrt(E); the teacher's over H, ~sqrt(H)
    gain, bias = t_emb.LayerNorm.weight.float(), t_emb.LayerNorm.bias.float()
    project.weight.copy_(gain[:, None] * basis * (basis.shape[0] / e) ** 0.5)
    project.bias.copy_(bias)


def load_pretrained_student(path: str | Path, *, vocab_size: int, labels: Sequence[str], task: Task = "token",
                            attn_implementation: str | None = None) -> PreTrainedModel:
    """A student saved with `save_pretrained` (safetensors); a head of another label set is re-initialised."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"student.init_from: {path} is not a folder")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"student.init_from: no *.safetensors weights in {path} (pickled .bin weights are "
                          f"not loaded: unpickling can run code); re-save with save_pretrained")
    auto = AutoModelForTokenClassification if task == "token" else AutoModelForSequenceClassification
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = from_pretrained(auto, str(folder), use_safetensors=True, **label_maps(labels), **kwargs)
    if model.config.vocab_size != vocab_size:
        raise ConfigError(f"student.init_from: {path} has a vocabulary of {model.config.vocab_size} pieces, the "
                          f"tokenizer {vocab_size}; the student must keep the tokenizer's vocabulary")
    c = model.config
    log.info("student.init_from %s: %s, %d layers, hidden %d, embedding %d (the folder's shape; the student.* "
             "shape fields are not used)", path, type(model).__name__, c.num_hidden_layers, c.hidden_size,
             getattr(c, "embedding_size", c.hidden_size))
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied ones once); with `trainable_only` those with requires_grad. A model
    partitioned by ZeRO-3 counts its full sizes."""
    return sum(_numel(p) for p in model.parameters() if p.requires_grad or not trainable_only)


def _numel(p: torch.Tensor) -> int:
    return getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 leaves an empty tensor where the shard was


def parameter_breakdown(model: PreTrainedModel) -> dict[str, int]:
    """Parameters by part: word embeddings, other embeddings (+ E->H projection), encoder, head, total.

    Why: with the 119,547-piece mBERT vocabulary most of a small student is word embeddings, which is what
    factorizing and freezing them address; a run logs this split.
    """
    base = model.base_model
    word = _numel(model.get_input_embeddings().weight)
    emb = count_parameters(base.embeddings) - word
    if hasattr(base, "embeddings_project"):
        emb += count_parameters(base.embeddings_project)
    encoder = count_parameters(base.encoder)
    total = count_parameters(model)
    return {"word_embeddings": word, "other_embeddings": emb, "encoder": encoder,
            "head": total - word - emb - encoder, "total": total}
