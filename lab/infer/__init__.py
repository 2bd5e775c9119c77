"""Chapter 6, inference: KV caches (static and paged), generation, continuous batching, speculative decoding."""

from lab.infer.cuda_graph import GraphedDecodeStep
from lab.infer.generate import Decoder, generate
from lab.infer.kv_cache import StaticKVCache, forward_cached, masked_attention
from lab.infer.paged import BlockAllocator, OutOfBlocksError, PagedKVCache
from lab.infer.roofline import decode_step_cost, speed_of_light_ms, weight_bytes
from lab.infer.sampling import filter_logits, next_token_probs, sample
from lab.infer.scheduler import Request, ServeResult, serve
from lab.infer.speculative import expected_speedup, expected_tokens_per_step, speculative_accept, speculative_generate

__all__ = [
    "GraphedDecodeStep", "Decoder", "generate", "StaticKVCache", "forward_cached", "masked_attention",
    "BlockAllocator", "OutOfBlocksError", "PagedKVCache", "decode_step_cost", "speed_of_light_ms", "weight_bytes",
    "filter_logits", "next_token_probs", "sample", "Request", "ServeResult", "serve", "expected_speedup",
    "expected_tokens_per_step", "speculative_accept", "speculative_generate",
]
