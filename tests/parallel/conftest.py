"""The one gloo launch that lab.parallel's test files share: every ``job_*`` runs on a healthy 2-process group
in a single launch (starting processes costs seconds), once per test session."""

from __future__ import annotations

import pytest

from lab.parallel.launch import launch
from tests.parallel.test_ddp import job_data_parallel, job_no_sync
from tests.parallel.test_strategies import N, job_bad_input, job_train_every_strategy
from tests.parallel.test_tensor_parallel import job_model_parallel
from tests.parallel.test_zero import job_zero_accumulation


def job_all(steps: int) -> dict:
    """Every check that runs on a healthy group, in one launch (a launch costs seconds)."""
    return {"dp": job_data_parallel(steps), "mp": job_model_parallel(), "bad": job_bad_input(),
            "acc": job_zero_accumulation(steps), "train": job_train_every_strategy(steps), "no_sync": job_no_sync()}


@pytest.fixture(scope="session")
def results():
    return launch(job_all, N, 3, timeout=60)


@pytest.fixture(scope="session")
def dp_results(results):
    return [r["dp"] for r in results]


@pytest.fixture(scope="session")
def mp_results(results):
    return [r["mp"] for r in results]
