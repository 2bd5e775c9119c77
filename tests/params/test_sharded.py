"""lab.params.sharded: sharded checkpoints with an index.

References: the `safetensors` library (reads every shard) and `transformers` (reads our sharded checkpoints).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lab.params.sharded as sharded
from lab.models.gpt import GPT
from lab.params.lazy import untied_state_dict
from lab.params.sharded import INDEX_NAME, load_sharded, read_index, save_sharded
from tests.params.test_safetensors_io import TINY, assert_same, random_tensor

# --- sharded checkpoints ---------------------------------------------------------------------------

def sample_state() -> dict[str, torch.Tensor]:
    sizes = [40, 10, 30, 200, 5, 5, 60]  # float32 element counts
    return {f"t{i}": random_tensor(torch.float32, (n,), seed=i) for i, n in enumerate(sizes)}


def test_sharded_round_trip_and_greedy_packing(tmp_path):
    state = sample_state()
    paths = save_sharded(state, tmp_path, max_shard_bytes=200)
    # greedy by hand, bytes 160,40,120,800,20,20,240 with limit 200: [t0,t1] [t2] [t3] [t4,t5] [t6]
    expected = [["t0", "t1"], ["t2"], ["t3"], ["t4", "t5"], ["t6"]]
    assert [p.name for p in paths] == [f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)]
    index = json.loads((tmp_path / INDEX_NAME).read_text())
    assert index["metadata"] == {"total_size": sum(v.nbytes for v in state.values())}
    assert index["weight_map"] == {n: paths[i].name for i, names in enumerate(expected) for n in names}
    from_library = {}
    for p in paths:  # every shard is a plain safetensors file for the reference library
        shard = load_file(p)
        assert all(index["weight_map"][n] == p.name for n in shard)
        from_library.update(shard)
    assert_same(from_library, state)
    assert_same(load_sharded(tmp_path), state)


def test_transformers_loads_our_sharded_checkpoint(tmp_path):
    from transformers import LlamaForCausalLM

    from lab.models.pretrained import to_llama

    torch.manual_seed(0)
    hf = to_llama(GPT(TINY))
    save_sharded(untied_state_dict(hf), tmp_path, max_shard_bytes=20_000)
    hf.config.save_pretrained(tmp_path)
    assert len(set(read_index(tmp_path).values())) > 2
    reloaded = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, TINY.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(idx).logits, hf(idx).logits)


@pytest.mark.parametrize("limit, error, match", [
    (0, ValueError, r"max_shard_bytes=0 is out of range; allowed: \[1, inf\)"),
    (-5, ValueError, r"max_shard_bytes=-5 is out of range"),
    (1.5, TypeError, r"max_shard_bytes must be an int, got 1.5 \(float\)"),
])
def test_bad_max_shard_bytes(tmp_path, limit, error, match):
    with pytest.raises(error, match=match):
        save_sharded(sample_state(), tmp_path, max_shard_bytes=limit)
    assert list(tmp_path.iterdir()) == []


def test_sharded_bad_values_write_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"tensors\['x'\] is a int"):
        save_sharded({"a": torch.ones(3), "x": 3}, tmp_path / "ck", max_shard_bytes=4)
    assert not (tmp_path / "ck").exists()


def test_sharded_missing_index_shard_or_tensor(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"directory=.* has no {INDEX_NAME}"):
        load_sharded(tmp_path)
    paths = save_sharded(sample_state(), tmp_path, max_shard_bytes=200)
    index_path = tmp_path / INDEX_NAME
    index = json.loads(index_path.read_text())

    index_path.write_text(json.dumps({**index, "weight_map": {**index["weight_map"], "ghost": paths[0].name}}))
    with pytest.raises(ValueError, match=rf"tensor 'ghost' is listed in .* under shard '{paths[0].name}', but"):
        load_sharded(tmp_path)

    del index["weight_map"]["t1"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"holds tensor 't1' that the index does not map to it"):
        load_sharded(tmp_path)

    index_path.write_text("{not json")
    with pytest.raises(ValueError, match=r"not a valid index"):
        load_sharded(tmp_path)

    save_sharded(sample_state(), tmp_path, max_shard_bytes=200)
    paths[2].unlink()
    with pytest.raises(FileNotFoundError, match=rf"shard '{paths[2].name}' named in .* does not exist"):
        load_sharded(tmp_path)


def test_interrupted_sharded_save_leaves_no_index(tmp_path, monkeypatch):
    save_sharded(sample_state(), tmp_path, max_shard_bytes=200)
    real_save, calls = sharded.save_safetensors, []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(*args, **kwargs)

    monkeypatch.setattr(sharded, "save_safetensors", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_sharded(sample_state(), tmp_path, max_shard_bytes=200)
    with pytest.raises(FileNotFoundError, match=INDEX_NAME):
        load_sharded(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_resave_with_fewer_shards_removes_stale_ones(tmp_path):
    save_sharded(sample_state(), tmp_path, max_shard_bytes=200)
    save_sharded(sample_state(), tmp_path, max_shard_bytes=10_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([INDEX_NAME, "model-00001-of-00001.safetensors"])
    assert_same(load_sharded(tmp_path), sample_state())
