"""Chapter 4, knowledge distillation: KD / feature / attention losses, students, the training loop."""

from lab.distill.features import Outputs, attention_log_probs, gpt_outputs
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.losses import (attention_transfer_loss, cross_entropy, hidden_state_loss, kd_loss, kl_divergence,
                                log_softmax)
from lab.distill.students import gpt_student, init_from_teacher, teacher_layer_indices, uniform_layer_map

__all__ = [
                                "KDLoss",
                                "Outputs",
                                "TeacherCache",
                                "attention_log_probs",
                                "attention_transfer_loss",
                                "cross_entropy",
                                "distill",
                                "gpt_outputs",
                                "gpt_student",
                                "hidden_state_loss",
                                "init_from_teacher",
                                "kd_loss",
                                "kl_divergence",
                                "log_softmax",
                                "teacher_layer_indices",
                                "uniform_layer_map",
]
