"""Chapter 2, pruning: masks, Optimal Brain Surgeon, SparseGPT, sequential and structured pruning (with a
least-squares refit), 2:4 storage."""

from lab.formats.sparse24 import compress, decompress
from lab.prune.masks import keep_top_fraction, magnitude_mask, nm_mask, wanda_mask
from lab.prune.obs import layer_hessian, obs_prune_row_bruteforce, obs_saliency, obs_update, reconstruction_error
from lab.prune.refit import refit_columns
from lab.prune.seeds import sweep_name
from lab.prune.sequential import layer_errors, layer_sensitivity, prune_model, sparsity_of
from lab.prune.sparsegpt import sparsegpt_prune
from lab.prune.structured import forward_flops, prune_structured_by_importance, speedup_against_bound, structured_prune

__all__ = [
                           "compress",
                           "decompress",
                           "forward_flops",
                           "keep_top_fraction",
                           "layer_errors",
                           "layer_hessian",
                           "layer_sensitivity",
                           "magnitude_mask",
                           "nm_mask",
                           "obs_prune_row_bruteforce",
                           "obs_saliency",
                           "obs_update",
                           "prune_model",
                           "prune_structured_by_importance",
                           "reconstruction_error",
                           "refit_columns",
                           "sparsegpt_prune",
                           "sparsity_of",
                           "speedup_against_bound",
                           "structured_prune",
                           "sweep_name",
                           "wanda_mask",
]
