"""lab.params.finetune: the run equals the loop it wraps, trains only what requires grad, and measures
its optimizer state as the memory model predicts it."""

import copy

import pytest
import torch

from lab.data import corpus_documents
from lab.models.loop import BETAS, Optim, train
from lab.models.next_token import lm_batch_loss, random_batch
from lab.params.counting import unique_parameters
from lab.params.finetune import document_sample, document_tokens, finetune, lr_sweep
from lab.params.lora import add_lora, lora_memory, trainable_parameters
from lab.params.memory import optimizer_state_bytes
from lab.perplexity import EvalSample

STEPS, LR = 4, 3e-3


def _batches(model, n=STEPS, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.config.vocab_size, (400,), generator=gen)
    return [random_batch(tokens, 2, 8, gen) for _ in range(n)], document_sample(tokens[:64], 1, window=8, context=8)


def test_adamw_run_equals_the_loop_with_torch_adamw(tiny_gpt):
    model = tiny_gpt()
    batches, sample = _batches(model)
    reference = copy.deepcopy(model)
    record = finetune(model, batches, "adamw", lr=LR, warmup=2, sample=sample)
    opt = torch.optim.AdamW(reference.parameters(), lr=LR, betas=BETAS, weight_decay=0.0)
    expected = train(reference, batches, lm_batch_loss, STEPS, optim=Optim(LR, 2, 0.0, 1.0), optimizer=opt,
                     progress=False)
    assert record["loss"] == expected["loss"] and record["lr"] == expected["lr"]
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(record["token_losses"], sample.token_losses(model))
    assert record["trainable_parameters"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor", "adam8bit", "sgd-momentum"])
def test_measured_state_bytes_equal_the_memory_model(tiny_gpt, optimizer):
    model = tiny_gpt()
    batches, _ = _batches(model, n=2)
    record = finetune(model, batches, optimizer, lr=1e-3)
    shapes = [p.shape for _, p in unique_parameters(model)[0]]
    n = sum(p.numel() for _, p in unique_parameters(model)[0])
    assert record["optimizer_state_bytes"] == optimizer_state_bytes(optimizer, n, 4, shapes)
    assert record["token_losses"] is None
    assert all(torch.isfinite(torch.tensor(record["loss"])))


def test_lora_run_trains_only_A_and_B_and_its_state_is_lora_memorys(tiny_gpt):
    model = tiny_gpt()
    add_lora(model, r=2, alpha=4.0, targets=("q_proj", "v_proj"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    batches, sample = _batches(model)
    record = finetune(model, batches, "adamw", lr=1e-2, sample=sample)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
        elif name.endswith(".B"):
            assert p.abs().max() > 0, name            # B starts at 0 and has moved
    assert record["trainable_parameters"] == trainable_parameters(model)
    assert record["optimizer_state_bytes"] == lora_memory(model)["optimizer"]
    assert record["token_losses"].shape == (63,)


def test_document_tokens_are_the_documents_text_tokenized(tokenizer):
    path, text = corpus_documents("validation")[0]
    ids = document_tokens(path, tokenizer)
    assert ids.dtype == torch.int64 and ids.dim() == 1
    assert ids.tolist() == tokenizer(text, add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match=r"path='library/nothing.rst.txt' is not a corpus document"):
        document_tokens("library/nothing.rst.txt", tokenizer)
    with pytest.raises(TypeError, match="path must be a str"):
        document_tokens(3, tokenizer)


def test_bad_arguments_are_named(tiny_gpt):
    model = tiny_gpt()
    batches, _ = _batches(model, n=1)
    with pytest.raises(ValueError, match="optimizer='lion' is not allowed"):
        finetune(model, batches, "lion", lr=1e-3)
    with pytest.raises(ValueError, match="lr=0.0 is out of range"):
        finetune(model, batches, lr=0.0)
    with pytest.raises(TypeError, match="batches must be a non-empty sequence"):
        finetune(model, iter(batches), lr=1e-3)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        finetune("gpt", batches, lr=1e-3)
    with pytest.raises(TypeError, match="sample must be a lab.perplexity.EvalSample .* got Tensor"):
        finetune(model, batches, lr=1e-3, sample=torch.arange(10))
    T = model.config.context_length
    long = EvalSample((torch.arange(T + 1),), (1,), torch.arange(T), torch.zeros(T, dtype=torch.int64))
    with pytest.raises(ValueError, match="more than the model's context_length"):   # before training, not after
        finetune(model, batches, lr=1e-3, sample=long)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        finetune(model, batches, lr=1e-3)


def test_document_sample_scores_every_held_out_token_once_with_its_own_context():
    tokens = torch.arange(1000, 1300)
    sample = document_sample(tokens, 40, window=64, context=16)
    assert isinstance(sample, EvalSample)
    assert torch.equal(sample.tokens, tokens[40:]) and sample.documents.shape == (260,)
    assert sample.documents.tolist() == sorted(sample.documents.tolist())   # consecutive windows
    k = int(sample.documents.max()) + 1
    assert k == 5 and torch.bincount(sample.documents).tolist() == [52] * 5   # ⌈260 / 64⌉ near-equal
    scored = torch.cat([x[c:] for x, c in zip(sample.inputs, sample.n_context)])
    assert torch.equal(scored, tokens[40:]) and set(sample.n_context) == {16}
    for x, c in zip(sample.inputs, sample.n_context):   # context: the tokens just before, same document
        begin = int(x[c]) - 1000
        assert torch.equal(x, tokens[begin - c:begin + len(x) - c])
    assert document_sample(tokens, 1, window=64, context=16).n_context[0] == 1
    with pytest.raises(ValueError, match="start=300 is out of range"):
        document_sample(tokens, 300)
    with pytest.raises(TypeError, match="tokens must be a 1-D int64 tensor"):
        document_sample(tokens.float(), 1)


def test_lr_sweep_is_one_finetune_per_rate_on_copies(tiny_gpt):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    batches, sample = _batches(model, n=2)
    swept = lr_sweep(model, batches, (1e-3, 1e-2), sample)
    assert list(swept) == [1e-3, 1e-2]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k                       # the model itself is not trained
    trained = copy.deepcopy(model)
    expected = finetune(trained, batches, "adamw", lr=1e-2, sample=sample)["token_losses"]
    assert torch.equal(swept[1e-2], expected) and swept[1e-2].shape == sample.tokens.shape
    lora = lr_sweep(model, batches, (1e-2,), sample, lora={"r": 2, "alpha": 4.0, "targets": ("q_proj",)})
    assert set(lora) == {1e-2} and not torch.equal(lora[1e-2], swept[1e-2])
    assert not any(n.endswith(".A") for n, _ in model.named_parameters())
    with pytest.raises(TypeError, match="rates must be a non-empty sequence"):
        lr_sweep(model, batches, (), sample)
    with pytest.raises(TypeError, match="lora must be None or a dict"):
        lr_sweep(model, batches, (1e-3,), sample, lora=("q_proj",))
