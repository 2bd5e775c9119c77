"""lab.distill features, students, the `distill` loop, the encoder task.

References: the model's own forward (logits, attention output through ``scaled_dot_product_attention``),
a direct per-head computation of MiniLM's attention and value relations from the last layer's q, k, v,
`transformers`' BERT (hidden states), the teacher itself (a student with all layers is the teacher),
and a manual cross-entropy training loop.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertModel

from lab.distill import (KDLoss, TeacherCache, attention_log_probs, distill, gpt_outputs, gpt_student,
                         init_from_teacher, kd_loss, minilm_loss, teacher_layer_indices, uniform_layer_map,
                         value_relation_log_probs)
from lab.distill.encoder_task import (EncoderClassifier, _prose_paragraphs, bert_student, classifier_outputs,
                                      paragraph_dataset)
from lab.models import GPT
from lab.models.gpt import apply_rope, rope_cos_sin
from lab.models.loop import Optim
from tests.tiny_models import tiny_gpt as make_tiny_gpt


def tiny_gpt(seed: int = 0, n_layer: int = 4) -> GPT:
    return make_tiny_gpt(seed, vocab_size=37, n_layer=n_layer)


def ids(B=2, T=12, seed=0):
    return torch.randint(0, 37, (B, T), generator=torch.Generator().manual_seed(seed))


def tiny_batches(n=3, B=2, T=12):
    return [(x[:, :-1], x[:, 1:]) for x in (ids(B, T + 1, seed) for seed in range(n))]


def test_gpt_outputs_leave_logits_unchanged_and_hidden_states_reach_them():
    model, x = tiny_gpt(), ids()
    out = gpt_outputs(model, x, hidden=True, attention=True)
    torch.testing.assert_close(out.logits, model(x))
    assert len(out.hidden) == 5
    assert out.attention.shape == out.value_relation.shape == (2, 4, 12, 12)       # the last layer's, n_h = 4
    torch.testing.assert_close(out.hidden[0], model.embed_tokens(x))
    torch.testing.assert_close(model.lm_head(model.norm(out.hidden[-1])), out.logits)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_attention_log_probs_reproduce_the_attention_output():
    model = tiny_gpt()
    attn, h = model.layers[1].attn, torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(3))
    cos, sin = rope_cos_sin(12, model.config.head_dim, model.config.rope_theta)
    A = attention_log_probs(attn, h, cos, sin).exp()                  # (B, H, T, T)
    torch.testing.assert_close(A.sum(-1), torch.ones(2, 4, 12))
    assert torch.all(A.triu(1) == 0)
    v = attn.v_proj(h).view(2, 12, 2, 8).transpose(1, 2).repeat_interleave(2, dim=1)
    y = (A @ v).transpose(1, 2).reshape(2, 12, 32)
    torch.testing.assert_close(attn.o_proj(y), attn(h, cos, sin), rtol=1e-4, atol=1e-5)


def _direct_relations(model: GPT, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last layer's A = softmax(q kᵀ/√D + mask) and VR = softmax(v vᵀ/√D + mask), head by head, float64."""
    cfg, T = model.config, x.shape[1]
    cos, sin = rope_cos_sin(T, cfg.head_dim, cfg.rope_theta)
    h = model.embed_tokens(x)
    for block in model.layers[:-1]:
        h = block(h, cos, sin)
    attn = model.layers[-1].attn
    u = model.layers[-1].attn_norm(h).double()
    split = (lambda w, n: (u @ w.weight.double().T).view(*x.shape, n, cfg.head_dim).transpose(1, 2))
    q, k, v = split(attn.q_proj, cfg.n_head), split(attn.k_proj, cfg.n_kv_head), split(attn.v_proj, cfg.n_kv_head)
    q, k = apply_rope(q, cos.double(), sin.double()), apply_rope(k, cos.double(), sin.double())
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    A, VR = [], []
    for a in range(cfg.n_head):
        g = a // (cfg.n_head // cfg.n_kv_head)                           # the kv head query head a reads
        A.append((q[:, a] @ k[:, g].transpose(-1, -2) / cfg.head_dim ** 0.5).masked_fill(future, -torch.inf))
        VR.append((v[:, g] @ v[:, g].transpose(-1, -2) / cfg.head_dim ** 0.5).masked_fill(future, -torch.inf))
    return torch.stack(A, 1).softmax(-1), torch.stack(VR, 1).softmax(-1)


def test_minilm_loss_of_gpt_outputs_matches_a_direct_computation():
    """MiniLM (Wang et al. 2020): KL of the last layers' attention distributions plus KL of their value
    relations, per head and query, averaged; here from two models of different depth and one width."""
    teacher, student, x = tiny_gpt(seed=0, n_layer=4), tiny_gpt(seed=1, n_layer=2), ids()
    with torch.no_grad():
        out_s, out_t = gpt_outputs(student, x, attention=True), gpt_outputs(teacher, x, attention=True)
        (A_s, VR_s), (A_t, VR_t) = _direct_relations(student, x), _direct_relations(teacher, x)
    torch.testing.assert_close(out_s.attention.exp().double(), A_s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out_t.value_relation.exp().double(), VR_t, rtol=1e-4, atol=1e-6)
    kl = (lambda p, q: torch.where(p > 0, p * (p.log() - q.log()), 0.0).sum(-1).mean())   # mean over (B, n_h, T)
    expected = kl(A_t, A_s) + kl(VR_t, VR_s)
    got = minilm_loss(out_s.attention, out_t.attention, out_s.value_relation, out_t.value_relation)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-6)
    y = x.roll(-1, 1)
    term = KDLoss(teacher, alpha=1.0, attention_weight=1.0)(student, (0, x, y)) - KDLoss(teacher, alpha=1.0)(
        student, (0, x, y))
    torch.testing.assert_close(term.double(), expected, rtol=1e-4, atol=1e-5)


def test_value_relation_log_probs_are_causal_distributions():
    model = tiny_gpt()
    h = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(4))
    VR = value_relation_log_probs(model.layers[0].attn, h).exp()
    torch.testing.assert_close(VR.sum(-1), torch.ones(2, 4, 12))
    assert torch.all(VR.triu(1) == 0)
    assert torch.equal(VR[:, 0], VR[:, 1])                                # query heads 0, 1 share kv head 0


def test_hidden_loss_is_distilberts_cosine_on_the_last_layer_only():
    teacher, student, x = tiny_gpt(seed=0, n_layer=4), tiny_gpt(seed=1, n_layer=2), ids()
    y = x.roll(-1, 1)
    with torch.no_grad():
        h_s = gpt_outputs(student, x, hidden=True).hidden[-1]
        h_t = gpt_outputs(teacher, x, hidden=True).hidden[-1]
        term = (KDLoss(teacher, alpha=1.0, hidden_weight=1.0)(student, (0, x, y))
                - kd_loss(student(x), teacher(x), y, temperature=2.0, alpha=1.0))
    expected = 1 - torch.nn.functional.cosine_similarity(h_s, h_t, dim=-1).mean()
    torch.testing.assert_close(term, expected, rtol=1e-5, atol=1e-6)


def test_layer_indices_and_uniform_map():
    assert teacher_layer_indices(6, 3) == [0, 2, 4]
    assert teacher_layer_indices(6, 2) == [0, 3]
    assert teacher_layer_indices(6, 6) == list(range(6))
    assert uniform_layer_map(3, 6) == [(1, 2), (2, 4), (3, 6)]
    assert uniform_layer_map(2, 6) == [(1, 3), (2, 6)]
    for bad in [(6, 7), (6, 0), (0, 1)]:
        with pytest.raises(ValueError):
            teacher_layer_indices(*bad)


def test_gpt_student_copies_every_other_teacher_layer():
    teacher = tiny_gpt(n_layer=4)
    student = gpt_student(teacher, 2)
    for i, j in enumerate([0, 2]):
        for (name, p), (_, q) in zip(student.layers[i].named_parameters(), teacher.layers[j].named_parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.embed_tokens.weight, teacher.embed_tokens.weight)
    assert student.lm_head.weight is student.embed_tokens.weight          # still tied
    full = gpt_student(teacher, 4)
    torch.testing.assert_close(full(ids()), teacher(ids()))               # M = L: the teacher itself
    scratch = gpt_student(teacher, 2, from_teacher=False, seed=1)
    assert not torch.equal(scratch.layers[0].attn.q_proj.weight, teacher.layers[0].attn.q_proj.weight)
    with pytest.raises(TypeError):
        gpt_student(BertModel(BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=8)), 1)


def test_init_from_teacher_on_bert_matches_hidden_states():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    teacher = BertModel(cfg).eval()
    student = BertModel(BertConfig(**{**cfg.to_dict(), "num_hidden_layers": 2})).eval()
    assert init_from_teacher(student, teacher) == [0, 3]
    x = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        h_t = teacher(x, output_hidden_states=True).hidden_states
        h_s = student(x, output_hidden_states=True).hidden_states
        layer3 = teacher.encoder.layer[3](h_s[1])
    layer3 = layer3[0] if isinstance(layer3, tuple) else layer3
    torch.testing.assert_close(h_s[1], h_t[1])                            # student layer 0 = teacher layer 0
    torch.testing.assert_close(h_s[2], layer3)                            # student layer 1 = teacher layer 3
    with pytest.raises(ValueError, match="counterpart"):
        init_from_teacher(tiny_gpt(n_layer=2), teacher)


def test_hard_label_distill_is_plain_cross_entropy_training_and_never_runs_the_teacher():
    teacher, batches = tiny_gpt(), tiny_batches()
    calls = []
    cache = TeacherCache(teacher, outputs_fn=lambda *a: calls.append(1) or gpt_outputs(*a))
    a, b = gpt_student(teacher, 2), gpt_student(teacher, 2)
    rec = distill(a, batches, 4, KDLoss(cache, alpha=0.0), optim=Optim(1e-2, warmup=1, weight_decay=0.0, grad_clip=1e9),
                  progress=False)
    assert calls == []
    opt = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    b.train()
    for step in range(4):
        for group in opt.param_groups:
            group["lr"] = rec["lr"][step]
        x, y = batches[step % 3]
        loss = torch.nn.functional.cross_entropy(b(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert abs(loss.item() - rec["loss"][step]) < 1e-4
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_distill_uses_cache_once_per_batch_and_leaves_teacher_unchanged():
    teacher, batches = tiny_gpt(), tiny_batches()
    before = copy.deepcopy(teacher.state_dict())
    calls = []
    cache = TeacherCache(teacher, outputs_fn=lambda *a: calls.append(1) or gpt_outputs(*a))
    student = gpt_student(teacher, 2, from_teacher=False)
    init_from_teacher(student, teacher)
    rec = distill(student, batches, 6, KDLoss(cache, alpha=0.5, hidden_weight=1.0, attention_weight=1.0), eval_every=3,
                  eval_fn=lambda m: 1.0, progress=False)
    assert len(calls) == 3                                                 # 3 batches, each computed once
    assert [s for s, _ in rec["eval"]] == [0, 3, 6] and len(rec["loss"]) == 6
    assert rec["examples_seen"] == 12
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k])
    full = gpt_student(teacher, 4)                                        # student = teacher: only CE remains
    rec = distill(full, batches[:1], 1, KDLoss(teacher, alpha=1.0, hidden_weight=1.0, attention_weight=1.0),
                  progress=False)
    assert abs(rec["loss"][0]) < 1e-5


def test_distill_loss_decreases_towards_teacher():
    teacher, batches = tiny_gpt(), tiny_batches(2)
    student = gpt_student(teacher, 1, from_teacher=False)
    rec = distill(student, batches, 60, KDLoss(teacher, alpha=1.0, temperature=1.0), optim=Optim(3e-3), progress=False)
    assert sum(rec["loss"][-5:]) < 0.5 * sum(rec["loss"][:5])


@pytest.mark.parametrize("make, match", [
    (lambda t, s, b: distill(s, b, 0, KDLoss(t)), "steps=0"),
    (lambda t, s, b: distill(s, [], 1, KDLoss(t)), "batches must hold"),
    (lambda t, s, b: distill(s, b, 1, KDLoss(t), optim=Optim(0.0)), "lr=0.0"),
    (lambda t, s, b: KDLoss(t, hidden_weight=-1.0), "hidden_weight=-1.0"),
    (lambda t, s, b: KDLoss(t, temperature=0.0), "temperature=0.0"),
    (lambda t, s, b: KDLoss(t, alpha=1.5), "alpha=1.5"),
    (lambda t, s, b: KDLoss(t, kind="sideways"), "kind='sideways'"),
])
def test_distill_bad_input_raises(make, match):
    teacher = tiny_gpt()
    with pytest.raises(ValueError, match=match):
        make(teacher, gpt_student(teacher, 2), tiny_batches(1))


def test_distill_takes_at_most_eight_parameters():
    """The loss settings live in `KDLoss`, the optimisation settings in `Optim`: distill stays short."""
    import inspect

    assert len(inspect.signature(distill).parameters) <= 8


def test_prose_paragraphs_drop_markup_blocks():
    rst = ("Title\n=====\n\n.. function:: f(x)\n\n   Indented description of f.\n\n"
           "A real paragraph that mentions :func:`len` and `a link <https://x.org>`_ in\nplain prose text.\n\n"
           "* a list item that is long enough to count as a paragraph on its own merits\n\n"
           "::\n\n   code()\n")
    assert _prose_paragraphs(rst, 20) == ["A real paragraph that mentions len and a link in plain prose text."]


def test_paragraph_dataset_is_balanced_and_split_by_document():
    data = paragraph_dataset(5, 3)
    assert len(data["train_texts"]) == 25 and len(data["test_texts"]) == 15
    assert sorted(set(data["train_labels"])) == list(range(5))
    assert [data["test_labels"].count(k) for k in range(5)] == [3] * 5
    assert not set(data["train_texts"]) & set(data["test_texts"])
    for part in ("train", "test"):  # each paragraph's page, of its label's class; no page in both parts
        assert len(data[f"{part}_documents"]) == len(data[f"{part}_texts"])
        assert all(path.startswith(data["classes"][label])
                   for path, label in zip(data[f"{part}_documents"], data[f"{part}_labels"]))
    assert not set(data["train_documents"]) & set(data["test_documents"])
    with pytest.raises(ValueError, match="paragraphs"):
        paragraph_dataset(10_000, 1)


def test_bert_student_and_classifier_outputs():
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                     intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    teacher = EncoderClassifier(BertModel(cfg).eval(), 3).eval()
    student = bert_student(teacher, 2)
    assert len(student.encoder.encoder.layer) == 2 and len(teacher.encoder.encoder.layer) == 6
    assert torch.equal(student.encoder.encoder.layer[1].output.dense.weight, teacher.encoder.encoder.layer[3].output.dense.weight)
    assert not student.encoder.embeddings.word_embeddings.weight.requires_grad
    inputs = {"input_ids": torch.randint(0, 50, (2, 6)), "attention_mask": torch.tensor([[1] * 6, [1] * 3 + [0] * 3])}
    out = classifier_outputs(student, inputs, hidden=True)
    torch.testing.assert_close(out.logits, student(**inputs))
    assert len(out.hidden) == 3
    with pytest.raises(ValueError, match="attention"):
        classifier_outputs(student, inputs, attention=True)
    with pytest.raises(ValueError, match="n_layer"):
        bert_student(teacher, 7)


def test_cpu_speedups_pairs_the_timings_and_judges_them_against_the_flop_bound():
    from lab.distill.experiments import cpu_speedups
    from lab.prune import forward_flops

    teacher = tiny_gpt(n_layer=4)
    students = {"2": gpt_student(teacher, 2), "4": gpt_student(teacher, 4)}
    result = cpu_speedups(teacher, students, ids(2, 12), rounds=3)
    assert set(result) == {"2", "4"}
    assert result["2"]["bound"] == forward_flops(teacher, 12) / forward_flops(students["2"], 12) > 1
    assert result["4"]["bound"] == 1.0   # all the teacher's layers: the same FLOPs
    for r in result.values():
        assert r["speedup"]["n"] == 3 and 0 < r["speedup"]["ci_low"] <= r["speedup"]["ratio"] <= r["speedup"]["ci_high"]
        assert r["verdict"] in ("lower", "higher", "equivalent", "inconclusive")
