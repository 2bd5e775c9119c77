"""Chapter 4, knowledge distillation: KD / hidden-state / self-attention losses, students, the training loop, and
the chapter's experiments (language-model and encoder students, forward vs reverse KL on a toy problem), and
on-policy distillation (GKD: the generalized JSD on the student's own samples)."""

from lab.distill.encoder_task import run_encoder_task
from lab.distill.experiments import cpu_speedups, lm_batches, lm_run, retained, temperature_alpha_grid
from lab.distill.features import Outputs, attention_log_probs, gpt_outputs, value_relation_log_probs
from lab.distill.grid import cell_name
from lab.distill.loop import KDLoss, TeacherCache, distill
from lab.distill.losses import (cross_entropy, generalized_jsd, hidden_state_loss, kd_loss, kl_divergence, log_softmax,
                                minilm_loss, relation_kl)
from lab.distill.modes import fit_gaussian_student
from lab.distill.on_policy import (GKDLoss, held_out_prompts, is_on_policy, on_policy_run, own_sample_scores,
                                   sample_continuations)
from lab.distill.seeds import run_name
from lab.distill.students import gpt_student, init_from_teacher, teacher_layer_indices, uniform_layer_map

__all__ = [
    "GKDLoss",
    "KDLoss",
    "Outputs",
    "TeacherCache",
    "attention_log_probs",
    "cell_name",
    "cpu_speedups",
    "cross_entropy",
    "distill",
    "fit_gaussian_student",
    "generalized_jsd",
    "gpt_outputs",
    "gpt_student",
    "held_out_prompts",
    "hidden_state_loss",
    "init_from_teacher",
    "is_on_policy",
    "kd_loss",
    "kl_divergence",
    "lm_batches",
    "lm_run",
    "log_softmax",
    "minilm_loss",
    "on_policy_run",
    "own_sample_scores",
    "relation_kl",
    "retained",
    "run_encoder_task",
    "run_name",
    "sample_continuations",
    "teacher_layer_indices",
    "temperature_alpha_grid",
    "uniform_layer_map",
    "value_relation_log_probs",
]
