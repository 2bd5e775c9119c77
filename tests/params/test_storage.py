"""lab.params storage: safetensors from scratch, sharded checkpoints, lazy loading.

References: the `safetensors` library (reads/writes the same files), `transformers` (reads our sharded
checkpoints), `hashlib` (checksums), and the book's pretrained LM loaded by `load_pretrained_lm`.
"""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

import lab.core.atomic
import lab.params.sharded as sharded
from lab.models.gpt import GPT, GPTConfig
from lab.params.lazy import (build_on_meta, load_eager, load_lazy, measure_load_peak_rss, untied_state_dict)
from lab.params.safetensors_io import DTYPES, SafetensorsFile, load_safetensors, save_safetensors
from lab.params.sharded import INDEX_NAME, load_sharded, read_index, save_sharded

TINY = GPTConfig(vocab_size=64, context_length=16, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48)


def random_tensor(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    """Arbitrary bit patterns of ``dtype`` (floats via random bytes, incl. NaN/inf patterns)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel() * dtype.itemsize
    raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert as_bytes(a[k]) == as_bytes(b[k]), k  # bitwise, so NaN payloads count too


SHAPES = [(), (0,), (3, 0, 2), (7,), (5, 3), (2, 3, 4)]


def all_dtype_tensors() -> dict[str, torch.Tensor]:
    out = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        for j, shape in enumerate(SHAPES):
            out[f"{name}.{j}"] = random_tensor(dtype, shape, seed=10 * i + j)
    out["noncontig.T"] = random_tensor(torch.float32, (4, 6), seed=99).T
    out["noncontig.step"] = random_tensor(torch.bfloat16, (9, 4), seed=98)[::2, 1:]
    return out


# --- single files --------------------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_every_dtype_and_odd_shapes(tmp_path, mmap):
    tensors = all_dtype_tensors()
    save_safetensors(tensors, tmp_path / "a.safetensors", metadata={"note": "x"})
    assert_same(load_safetensors(tmp_path / "a.safetensors", mmap=mmap), tensors)


def test_our_file_loads_with_safetensors_library(tmp_path):
    tensors = all_dtype_tensors()
    save_safetensors(tensors, tmp_path / "a.safetensors")
    assert_same(load_file(tmp_path / "a.safetensors"), tensors)


def test_library_file_loads_with_ours(tmp_path):
    tensors = {k: v.contiguous() for k, v in all_dtype_tensors().items()}
    save_file(tensors, tmp_path / "lib.safetensors", metadata={"format": "pt"})
    assert_same(load_safetensors(tmp_path / "lib.safetensors"), tensors)  # no checksums: loads unverified
    assert SafetensorsFile(tmp_path / "lib.safetensors").metadata == {"format": "pt"}


def test_file_bytes_equal_the_library_without_metadata(tmp_path):
    tensors = {k: v.contiguous() for k, v in all_dtype_tensors().items()}
    save_safetensors(tensors, tmp_path / "a.safetensors", checksum=False)
    assert (tmp_path / "a.safetensors").read_bytes() == save(tensors)


def test_checksums_are_sha256_of_tensor_bytes(tmp_path):
    tensors = {"w": random_tensor(torch.float32, (3, 5)), "b": random_tensor(torch.int8, (4,), seed=1)}
    save_safetensors(tensors, tmp_path / "a.safetensors", metadata={"format": "pt"})
    with safe_open(tmp_path / "a.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta == {"format": "pt", **{f"lab.sha256.{k}": hashlib.sha256(as_bytes(v)).hexdigest()
                                       for k, v in tensors.items()}}


def test_mmap_views_are_copy_on_write(tmp_path):
    path = tmp_path / "a.safetensors"
    save_safetensors({"w": torch.arange(6.0)}, path)
    before = path.read_bytes()
    loaded = load_safetensors(path, mmap=True)
    loaded["w"].zero_()
    assert path.read_bytes() == before
    assert torch.equal(load_safetensors(path)["w"], torch.arange(6.0))


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=8).filter(lambda s: s != "__metadata__"),
    st.tuples(st.sampled_from(list(DTYPES.values())), st.lists(st.integers(0, 4), max_size=3),
              st.integers(0, 2**31)),
    max_size=5))
def test_round_trip_property(tmp_path_factory, spec):
    tensors = {name: random_tensor(dtype, shape, seed) for name, (dtype, shape, seed) in spec.items()}
    path = tmp_path_factory.mktemp("prop") / "p.safetensors"
    save_safetensors(tensors, path)
    assert_same(load_safetensors(path), tensors)
    assert_same(load_file(path), tensors)


# --- corrupt files ---------------------------------------------------------------------------------

@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    save_safetensors({"alpha": torch.arange(16.0), "beta": torch.ones(4, 4, dtype=torch.bfloat16)}, path)
    return path


def test_truncated_file(good_file):
    good_file.write_bytes(good_file.read_bytes()[:-3])
    with pytest.raises(ValueError, match=rf"{good_file.name}.*truncated"):
        load_safetensors(good_file)
    good_file.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match=rf"{good_file.name}: truncated file"):
        load_safetensors(good_file)


def test_flipped_data_byte_names_the_tensor(good_file):
    data = bytearray(good_file.read_bytes())
    data[-1] ^= 0x40  # last byte belongs to the last tensor in file order (beta, BF16 after F32)
    good_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{good_file.name}: tensor 'beta' fails its SHA-256"):
        load_safetensors(good_file)
    assert torch.equal(load_safetensors(good_file, verify=False)["alpha"], torch.arange(16.0))


def test_corrupted_header(good_file):
    data = bytearray(good_file.read_bytes())
    data[8] = ord("x")  # the header's opening brace
    good_file.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{good_file.name}: header is not valid UTF-8 JSON"):
        load_safetensors(good_file)


def test_absurd_header_length(good_file):
    good_file.write_bytes(struct.pack("<Q", 2**40) + good_file.read_bytes()[8:])
    with pytest.raises(ValueError, match=r"header length 1099511627776 is impossible"):
        load_safetensors(good_file)


def write_raw(path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_overlapping_and_inconsistent_offsets(tmp_path):
    path = tmp_path / "bad.safetensors"
    write_raw(path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12))
    with pytest.raises(ValueError, match=r"tensor 'b' starts at data offset 4, expected 8"):
        load_safetensors(path)
    write_raw(path, {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match=r"tensor 'a' has data_offsets \[0, 8\] \(8 bytes\) but dtype/shape need 12"):
        load_safetensors(path)
    write_raw(path, {"a": {"dtype": "C128", "shape": [1], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(ValueError, match=r"header entry for tensor 'a' is malformed"):
        load_safetensors(path)


def test_unaligned_file_from_another_writer(tmp_path):
    path = tmp_path / "odd.safetensors"  # header length 77 and a float32 at data offset 1: not aligned
    values = torch.tensor([1.5, -2.0])
    write_raw(path, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                     "b": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}, b"\x07" + as_bytes(values))
    assert_same(load_safetensors(path), {"a": torch.tensor([7], dtype=torch.uint8), "b": values})
    assert_same(load_safetensors(path), load_file(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path=.*nope\.safetensors' does not exist"):
        load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match=r"directory .* does not exist"):
        save_safetensors({}, tmp_path / "no_dir" / "a.safetensors")


# --- bad input to save -----------------------------------------------------------------------------

@pytest.mark.parametrize("tensors, metadata, error, match", [
    ({"w": [1.0, 2.0]}, None, TypeError, r"tensors\['w'\] is a list; only torch.Tensor"),
    ({3: torch.ones(1)}, None, TypeError, r"tensor name 3 is not allowed"),
    ({"w": torch.ones(1)}, {"k": 3}, TypeError, r"metadata=\{'k': 3\} is not allowed; it must be a dict of str -> str"),
    ({"w": torch.ones(1)}, {"lab.sha256.w": "0"}, ValueError, r"reserved for checksums"),
    ({"w": torch.ones(2, dtype=torch.complex64)}, None, ValueError,
     r"tensors\['w'\] has dtype torch.complex64; allowed"),
    ({"w": torch.ones(2, device="meta")}, None, ValueError, r"only dense tensors with data"),
])
def test_bad_save_input_writes_nothing(tmp_path, tensors, metadata, error, match):
    with pytest.raises(error, match=match):
        save_safetensors(tensors, tmp_path / "a.safetensors", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


def test_tied_weights_are_refused(tmp_path):
    model = GPT(TINY)
    with pytest.raises(ValueError, match=r"'embed_tokens.weight' and 'lm_head.weight' share memory"):
        save_safetensors(model.state_dict(), tmp_path / "a.safetensors")
    save_safetensors(untied_state_dict(model), tmp_path / "a.safetensors")
    assert "lm_head.weight" not in load_safetensors(tmp_path / "a.safetensors")


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp(good_file, monkeypatch, failing):
    before = good_file.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lab.core.atomic.os, failing, boom)  # the writer every lab module uses
    with pytest.raises(OSError, match="disk full"):
        save_safetensors({"alpha": torch.zeros(1000)}, good_file)
    monkeypatch.undo()
    assert good_file.read_bytes() == before
    assert [p.name for p in good_file.parent.iterdir()] == [good_file.name]


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


# --- lazy loading ----------------------------------------------------------------------------------

def test_meta_model_has_no_storage():
    model = build_on_meta(TINY)
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight


@pytest.mark.parametrize("sharded_dir", [False, True])
def test_lazy_equals_eager_equals_saved(tmp_path, sharded_dir):
    torch.manual_seed(0)
    model = GPT(TINY)
    state = untied_state_dict(model)
    if sharded_dir:
        save_sharded(state, tmp_path, max_shard_bytes=10_000)
        checkpoint = tmp_path
    else:
        checkpoint = tmp_path / "m.safetensors"
        save_safetensors(state, checkpoint)
    lazy = load_lazy(TINY, checkpoint, progress=False)
    eager = load_eager(TINY, checkpoint)
    for loaded in (lazy, eager):
        assert loaded.lm_head.weight is loaded.embed_tokens.weight
        assert_same(untied_state_dict(loaded), state)


def test_lazy_errors(tmp_path):
    torch.manual_seed(0)
    state = untied_state_dict(GPT(TINY))
    path = tmp_path / "m.safetensors"
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*m.safetensors' does not exist"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({k: v for k, v in state.items() if k != "norm.weight"}, path)
    with pytest.raises(ValueError, match=r"has no tensor for parameter 'norm.weight'"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({**state, "extra": torch.ones(1)}, path)
    with pytest.raises(ValueError, match=r"holds tensors the model does not use: \['extra'\]"):
        load_lazy(TINY, path, progress=False)
    save_safetensors({**state, "norm.weight": torch.ones(5)}, path)
    with pytest.raises(ValueError, match=r"'norm.weight' has shape \[5\], but parameter 'norm.weight' needs \[32\]"):
        load_lazy(TINY, path, progress=False)


def test_lazy_load_of_the_real_lm_matches_load_pretrained_lm():
    from transformers import LlamaConfig

    from lab.models.pretrained import LM_DIR, gpt_config_from_llama, load_pretrained_lm

    if not (LM_DIR / "model.safetensors").exists():
        pytest.skip("pretrained LM checkpoint not present")
    config = gpt_config_from_llama(LlamaConfig.from_pretrained(LM_DIR))
    lazy = load_lazy(config, LM_DIR / "model.safetensors", progress=False)  # HF names, bf16, lm_head tied
    reference = load_pretrained_lm("lab")
    idx = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lazy(idx), reference(idx))
    assert lazy.lm_head.weight is lazy.embed_tokens.weight


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    """A 64 MB float32 GPT checkpoint (16M parameters)."""
    config = GPTConfig(vocab_size=8192, context_length=64, d_model=512, n_layer=4, n_head=8, n_kv_head=4, d_ff=1408)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save_safetensors(untied_state_dict(GPT(config)), path)
    return config, path


def test_lazy_peak_rss_is_below_eager(big_checkpoint):
    config, path = big_checkpoint
    size = path.stat().st_size
    peak = {mode: measure_load_peak_rss(mode, path, config) for mode in ("baseline", "eager", "lazy")}
    # eager holds file + model (≈ 2 S above baseline), lazy the model plus one layer (≈ S + S/4)
    assert peak["eager"] - peak["baseline"] > 1.8 * size
    assert peak["baseline"] + size < peak["lazy"] < peak["eager"] - size / 2


def test_measure_bad_mode(big_checkpoint):
    config, path = big_checkpoint
    with pytest.raises(ValueError, match=r"mode='fast' is not allowed; use one of \('baseline', 'eager', 'lazy'\)"):
        measure_load_peak_rss("fast", path, config)
    with pytest.raises(FileNotFoundError, match=r"checkpoint=.*missing' does not exist"):
        measure_load_peak_rss("lazy", path.parent / "missing", config)
