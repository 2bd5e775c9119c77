"""lab.params.safetensors_io: safetensors written and read from scratch.

References: the `safetensors` library (reads/writes the same files) and `hashlib` (checksums).
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
from lab.models.gpt import GPT, GPTConfig
from lab.params.lazy import untied_state_dict
from lab.params.safetensors_io import DTYPES, SafetensorsFile, load_safetensors, save_safetensors

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
    write_raw(path, {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, bytes(1))   # JSON true
    with pytest.raises(ValueError, match=r"header entry for tensor 'a' is malformed"):
        load_safetensors(path)
    write_raw(path, {"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}}, bytes(1))
    with pytest.raises(ValueError, match=r"header entry for tensor 'a' is malformed"):
        load_safetensors(path)
    write_raw(path, {"a": {"dtype": "F32", "shape": [2**32, 2**32, 2**32], "data_offsets": [0, 8]}}, bytes(8))
    with pytest.raises(ValueError, match=r"but dtype/shape need 316912650057057350374175801344 bytes"):
        load_safetensors(path)                                               # 4·2^96: no int64 wrap-around


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
