"""Chapter 4, knowledge distillation: KD / hidden-state / self-attention losses, students, the training loop."""

from lab.distill.features import Outputs, attention_log_probs, gpt_outputs, value_relation_log_probs
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.losses import (cross_entropy, hidden_state_loss, kd_loss, kl_divergence, log_softmax, minilm_loss,
                                relation_kl)
from lab.distill.students import gpt_student, init_from_teacher, teacher_layer_indices, uniform_layer_map

__all__ = [
                                "KDLoss",
                                "Outputs",
                                "TeacherCache",
                                "attention_log_probs",
                                "cross_entropy",
                                "distill",
                                "gpt_outputs",
                                "gpt_student",
                                "hidden_state_loss",
                                "init_from_teacher",
                                "kd_loss",
                                "kl_divergence",
                                "log_softmax",
                                "minilm_loss",
                                "relation_kl",
                                "teacher_layer_indices",
                                "uniform_layer_map",
                                "value_relation_log_probs",
]
