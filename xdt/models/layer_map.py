"""Which teacher hidden state each student hidden state learns from (and which teacher layer it may copy).

States are numbered as transformers' `output_hidden_states` returns them: state 0 is the embedding output, state
k (1..L) the output of encoder layer k. A layer map pairs student states with teacher states:

- ``"top"`` (the paper, XtremeDistilTransformers): student state k <-> teacher state ``L_t - L_s + k``, so the
  student's last state learns from the teacher's last one and its embedding output from teacher state L_t - L_s.
- ``"uniform"``: student state k <-> teacher state ``k * L_t // L_s`` (floor; exact when L_s divides L_t), i.e.
  every (L_t / L_s)-th teacher state, the embedding outputs paired.
- an explicit list of L_s + 1 teacher state indices, one per student state 0..L_s; ``-1`` leaves that student
  state unmapped (e.g. ``[-1, -1, 7]`` distils only the last student state, from teacher state 7).

Errors a user can cause (a list of the wrong length, an index out of range, more student than teacher layers with
``"top"``) raise `ConfigError` naming the config key.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdt.errors import ConfigError

LayerMapSpec = str | Sequence[int]


def resolve_layer_map(spec: LayerMapSpec, student_layers: int, teacher_layers: int,
                      key: str = "distill.layer_map") -> list[tuple[int, int]]:
    """Pairs ``(student_state, teacher_state)`` for every mapped student state, in student order."""
    if student_layers <= 0 or teacher_layers <= 0:
        raise ConfigError(f"{key}: needs positive layer counts, got student {student_layers}, "
                          f"teacher {teacher_layers}")
    if isinstance(spec, str):
        if spec == "top":
            if student_layers > teacher_layers:
                raise ConfigError(f"{key}: 'top' needs at most as many student layers ({student_layers}) as "
                                  f"teacher layers ({teacher_layers}); use 'uniform' or an explicit list")
            offset = teacher_layers - student_layers
            return [(k, offset + k) for k in range(student_layers + 1)]
        if spec == "uniform":
            return [(k, k * teacher_layers // student_layers) for k in range(student_layers + 1)]
        raise ConfigError(f"{key}: expected 'top', 'uniform' or a list of teacher states, got {spec!r}")
    targets = list(spec)
    if len(targets) != student_layers + 1:
        raise ConfigError(f"{key}: expected {student_layers + 1} entries (one teacher state per student state "
                          f"0..{student_layers}, -1 for none), got {len(targets)}")
    pairs = []
    for k, t in enumerate(targets):
        if isinstance(t, bool) or not isinstance(t, int):
            raise ConfigError(f"{key}.{k}: expected an integer teacher state, got {t!r}")
        if t == -1:
            continue
        if not 0 <= t <= teacher_layers:
            raise ConfigError(f"{key}.{k}: teacher state {t} out of range 0..{teacher_layers} "
                              f"(0 = embeddings, {teacher_layers} = last layer), or -1 for none")
        pairs.append((k, t))
    if not pairs:
        raise ConfigError(f"{key}: maps no student state (every entry is -1)")
    return pairs


def teacher_layers_to_copy(spec: LayerMapSpec, student_layers: int, teacher_layers: int,
                           key: str = "distill.layer_map") -> list[int]:
    """0-based teacher encoder layer for each 0-based student layer, read off a layer map.

    Student layer i produces state i + 1, so it copies the teacher layer producing the paired state. With
    ``"uniform"`` and L_t = k * L_s this is every k-th layer (k-1, 2k-1, ..., L_t-1).
    """
    pairs = dict(resolve_layer_map(spec, student_layers, teacher_layers, key))
    layers = []
    for i in range(student_layers):
        state = pairs.get(i + 1)
        if state is None or state == 0:
            raise ConfigError(f"{key}: student layer {i + 1} must map to a teacher layer (state 1.."
                              f"{teacher_layers}) to copy its weights, got {state}")
        layers.append(state - 1)
    return layers
