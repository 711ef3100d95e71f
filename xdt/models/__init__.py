"""Teacher and student construction, embedding compression, layer maps.

    teacher = build_teacher(cfg.teacher, vocab_size=len(tok), labels=labels)
    student = build_student(cfg.student, vocab_size=len(tok), labels=labels, teacher=teacher)
"""

from xdt.models.embeddings import svd_components, svd_compress
from xdt.models.layer_map import resolve_layer_map, teacher_layers_to_copy
from xdt.models.student import (StudentShape, build_student, copy_from_teacher, count_parameters,
                                init_word_embeddings_svd, label_maps, load_pretrained_student, model_class,
                                parameter_breakdown, student_hf_config, student_shape)
from xdt.models.teacher import build_teacher

__all__ = [
    "StudentShape", "build_student", "build_teacher", "copy_from_teacher", "count_parameters",
    "init_word_embeddings_svd", "label_maps", "load_pretrained_student", "model_class", "parameter_breakdown",
    "resolve_layer_map", "student_hf_config", "student_shape", "svd_components", "svd_compress",
    "teacher_layers_to_copy",
]
