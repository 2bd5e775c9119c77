"""Chapter 6, inference: KV caches (static and paged), generation, continuous batching, speculative decoding."""

from lab.infer.cuda_graph import GraphedDecodeStep
from lab.infer.generate import Decoder, generate
from lab.infer.goodness_of_fit import generated_token_probs, ks_uniform_test, log_likelihood_z_test, randomized_pit
from lab.infer.kv_cache import StaticKVCache, forward_cached, masked_attention
from lab.infer.latency import speculative_costs, speculative_speedups, step_latencies
from lab.infer.load import poisson_arrivals, shared_prompt_trace
from lab.infer.ngram import sample_lookup_drafts
from lab.infer.paged import BlockAllocator, OutOfBlocksError, PagedKVCache
from lab.infer.prefix_cache import PrefixCachingAllocator
from lab.infer.roofline import (attainable_flops, decode_step_cost, decoder_linear_bytes_at, kv_bytes_per_position,
                                matmul_cost, prefill_crossover_tokens, speed_of_light_ms, weight_bytes)
from lab.infer.sampling import filter_logits, next_token_probs, sample
from lab.infer.scheduler import Request, ServeResult, schedule, serve, synthetic_trace
from lab.infer.serving_runs import paired_comparisons, predicted_row, roofline_step_time
from lab.infer.speculative import (SpeculativeResult, expected_speedup, expected_tokens_per_step, speculative_accept,
                                   speculative_generate)
from lab.infer.speculative_batch import (acceptance_over_rows, crossover_batch, crossover_formula,
                                         predicted_batch_speedup, speculative_generate_batch)

__all__ = [
    "GraphedDecodeStep", "load_draft", "teacher_forced", "Decoder", "generate", "generated_token_probs",
    "ks_uniform_test", "log_likelihood_z_test", "randomized_pit", "StaticKVCache", "forward_cached",
    "masked_attention", "speculative_costs", "speculative_speedups", "step_latencies", "sample_lookup_drafts",
    "BlockAllocator", "OutOfBlocksError", "PagedKVCache", "attainable_flops", "decode_step_cost",
    "decoder_linear_bytes_at", "kv_bytes_per_position", "matmul_cost", "prefill_crossover_tokens",
    "speed_of_light_ms", "weight_bytes", "filter_logits", "next_token_probs", "sample", "Request", "ServeResult",
    "serve", "schedule", "synthetic_trace", "SpeculativeResult", "expected_speedup", "expected_tokens_per_step",
    "speculative_accept", "speculative_generate", "acceptance_over_rows", "crossover_batch", "crossover_formula",
    "predicted_batch_speedup", "speculative_generate_batch",
    "PrefixCachingAllocator", "poisson_arrivals", "shared_prompt_trace",
    "paired_comparisons", "predicted_row", "roofline_step_time",
]


def __getattr__(name: str):
    """``load_draft`` and ``teacher_forced`` (`lab.infer.draft`), imported on first use, as `lab.parallel` does
    ``train``: importing them here would put `lab.infer.draft` in sys.modules before ``python -m lab.infer.draft``
    runs it (runpy's RuntimeWarning, and two copies of the module)."""
    if name in ("load_draft", "teacher_forced"):
        from lab.infer import draft

        return getattr(draft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
