"""Sharded checkpoints: several safetensors files plus an index, in the layout `transformers` uses.

    directory/
        model-00001-of-0000N.safetensors ... model-0000N-of-0000N.safetensors
        model.safetensors.index.json = {"metadata": {"total_size": Σ tensor bytes},
                                        "weight_map": {tensor name: shard file name}}

Packing is greedy in the state dict's order: a tensor joins the current shard if the shard stays
within ``max_shard_bytes``, otherwise it opens a new one (a tensor larger than the limit gets a shard
of its own). Every file is written atomically, and the old index is removed before the first shard
and the new one written after the last, so an interrupted save never leaves an index that points at
a mix of old and new shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lab.core.atomic import atomic_write_json
from lab.core.checks import check_device, check_int, check_path
from lab.params.safetensors_io import SafetensorsFile, save_safetensors, validate

INDEX_NAME = "model.safetensors.index.json"


def shard_name(i: int, n: int) -> str:
    """File name of shard i (1-based) of n, e.g. ``model-00001-of-00003.safetensors``."""
    return f"model-{i:05d}-of-{n:05d}.safetensors"


def plan_shards(sizes: dict[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Greedy packing of names (in order) into groups of total size ≤ max_shard_bytes."""
    check_int("max_shard_bytes", max_shard_bytes)
    shards: list[list[str]] = []
    used = 0
    for name, size in sizes.items():
        if not shards or used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards or [[]]


def read_index(directory: str | Path) -> dict[str, Path]:
    """Validated ``weight_map`` of a sharded checkpoint: tensor name → shard path (which exists)."""
    directory = check_path("directory", directory, folder=True)
    index = directory / INDEX_NAME
    if not index.is_file():
        raise FileNotFoundError(f"directory={str(directory)!r} has no {INDEX_NAME}; expected a sharded "
                                "checkpoint written by save_sharded (or transformers)")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{index}: not a valid index ({type(e).__name__}: {e}); expected JSON "
                         '{"metadata": {...}, "weight_map": {name: shard file}}') from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: weight_map must map tensor names to shard file names")
    shards = {file: directory / file for file in weight_map.values()}
    for file, path in shards.items():
        if Path(file).name != file:
            raise ValueError(f"{index}: shard {file!r} is not a plain file name inside {directory}")
        if not path.is_file():
            raise FileNotFoundError(f"shard {file!r} named in {index} does not exist")
    return {name: shards[file] for name, file in weight_map.items()}


def save_sharded(state_dict: dict[str, torch.Tensor], directory: str | Path, max_shard_bytes: int,
                 metadata: dict[str, str] | None = None) -> list[Path]:
    """Write ``state_dict`` as shards of at most ``max_shard_bytes`` each plus the index; returns the shards.

    ``metadata`` (str → str) is stored in every shard. Shards of an earlier save that the new index no
    longer names are deleted once the new index is in place.
    """
    directory = check_path("directory", directory, folder=True)
    validate(state_dict, metadata, "state_dict")  # everything is checked before anything is written
    groups = plan_shards({k: v.nbytes for k, v in state_dict.items()}, max_shard_bytes)
    directory.mkdir(parents=True, exist_ok=True)
    index = directory / INDEX_NAME
    try:
        old_shards = set(read_index(directory).values())
    except (FileNotFoundError, ValueError):
        old_shards = set()
    index.unlink(missing_ok=True)
    paths = [directory / shard_name(i + 1, len(groups)) for i in range(len(groups))]
    for names, path in zip(groups, paths):
        save_safetensors({n: state_dict[n] for n in names}, path, metadata=metadata)
    weight_map = {n: path.name for names, path in zip(groups, paths) for n in names}
    body = {"metadata": {"total_size": sum(v.nbytes for v in state_dict.values())},
            "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_json(index, body)
    for stale in old_shards - set(paths):
        stale.unlink(missing_ok=True)
    return paths


def open_shards(directory: str | Path, mmap: bool = True) -> dict[str, SafetensorsFile]:
    """Tensor name → open shard file, after checking that index and shards agree name for name."""
    weight_map = read_index(directory)
    files = {path: SafetensorsFile(path, mmap=mmap) for path in set(weight_map.values())}
    for name, path in weight_map.items():
        if name not in files[path].entries:
            raise ValueError(f"tensor {name!r} is listed in {Path(directory) / INDEX_NAME} under shard "
                             f"{path.name!r}, but that shard does not contain it")
    for path, f in files.items():
        extra = [n for n in f.names if weight_map.get(n) != path]
        if extra:
            raise ValueError(f"shard {path} holds tensor {extra[0]!r} that the index does not map to it")
    return {name: files[path] for name, path in weight_map.items()}


def load_sharded(directory: str | Path, device: str | torch.device = "cpu", mmap: bool = True,
                 verify: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a sharded checkpoint (index order), checksums verified, moved to ``device``."""
    check_device("device", device)
    return {name: f.tensor(name, verify=verify).to(device) for name, f in open_shards(directory, mmap).items()}
