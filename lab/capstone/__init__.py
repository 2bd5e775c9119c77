"""Chapter 7, putting it together: one leaderboard of every route of the book on one model."""

from lab.capstone.leaderboard import (build, decode_ms_per_token, git_commit, kept_weights, leaderboard, matmul_time,
                                      measure, round_to_bf16, seed_contexts, slug, stored_bytes, stored_tensors)
from lab.capstone.pareto import constraint_table, dominance, leaderboard_frame, pareto_front
from lab.capstone.routes import FP4Linear, Route, Settings
from lab.capstone.suite import run

__all__ = [
    "build", "decode_ms_per_token", "git_commit", "kept_weights", "leaderboard", "matmul_time", "measure",
    "round_to_bf16", "seed_contexts", "slug", "stored_bytes", "stored_tensors",
    "constraint_table", "dominance", "leaderboard_frame", "pareto_front",
    "FP4Linear", "Route", "Settings", "run",
]
