"""Lazy loading: build the model without memory, then fill it layer by layer from memory-mapped files.

Eager loading holds two full copies at its peak: the checkpoint read into memory (S bytes) and a
randomly initialised model (P bytes), so peak ≈ baseline + S + P. Lazy loading builds the model on
the ``meta`` device (shapes only, no storage), memory-maps the checkpoint, and for each layer copies
its tensors into freshly allocated parameters, then drops the mapped pages it read. Its peak is
≈ baseline + P + (largest layer), the least any loader that ends with a materialised model can do.

Checkpoint tensors are found under the lab parameter name or, failing that, under the
`transformers` Llama name (`lab.models.pretrained.lab_to_hf_name`), so both lab checkpoints and the
book's pretrained LM (``checkpoints/pydoc-gpt``) load. Tied parameters (``lm_head.weight`` is
``embed_tokens.weight``) need only one stored tensor and stay tied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from lab.core.checks import check_choice, check_device, check_float_dtype, check_path
from lab.models.gpt import GPT, GPTConfig
from lab.models.pretrained import lab_to_hf_name
from lab.params.safetensors_io import SafetensorsFile
from lab.params.sharded import INDEX_NAME, open_shards

MODES = ("baseline", "eager", "lazy")


def _check_config(config) -> GPTConfig:
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a lab.models.gpt.GPTConfig, got {type(config).__name__}")
    return config


def _check_load(config, device, dtype) -> None:
    """The arguments `load_lazy` and `load_eager` share: a GPTConfig, a device (str or torch.device), a float dtype."""
    _check_config(config)
    check_device("device", device)
    check_float_dtype("dtype", dtype)


def build_on_meta(config: GPTConfig) -> GPT:
    """A `GPT` whose parameters live on the meta device: right shapes and dtypes, zero bytes.

    Its initialisation is skipped: a meta tensor holds no values, and torch's first ``normal_`` on the meta
    device imports ``torch._dynamo`` (about 150 MB of modules and 5 s without bytecode), which the load
    itself never needs."""
    _check_config(config)
    with torch.device("meta"), _NoMetaNormal():
        return GPT(config)


class _NoMetaNormal(TorchFunctionMode):
    """Inside it, ``normal_`` of a meta tensor (`GPT`'s weight initialisation) returns the tensor untouched."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = kwargs.get("tensor", args[0] if args else None)    # nn.init.normal_ passes it by name
        if func in (nn.init.normal_, torch.Tensor.normal_) and getattr(tensor, "is_meta", False):
            return tensor
        return func(*args, **kwargs)


def untied_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with each shared parameter under its first name only (savable)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    keep = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in model.state_dict().items() if k in keep}


def open_checkpoint(checkpoint: str | Path, mmap: bool = True) -> dict[str, SafetensorsFile]:
    """Tensor name → open file, for a ``.safetensors`` file, a sharded directory, or a directory
    holding ``model.safetensors``."""
    path = check_path("checkpoint", checkpoint, folder=None)
    if path.is_dir() and (path / INDEX_NAME).exists():
        return open_shards(path, mmap=mmap)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} does not exist; expected a .safetensors "
                                f"file or a directory with {INDEX_NAME} or model.safetensors")
    f = SafetensorsFile(path, mmap=mmap)
    return {name: f for name in f.names}


def match_parameters(model: nn.Module, files: dict[str, SafetensorsFile],
                     checkpoint: str | Path) -> list[tuple[list[str], str]]:
    """For each distinct parameter: (all its names in ``model``, its name in the checkpoint).

    Raises ValueError for a parameter with no tensor, a shape mismatch, or a tensor no parameter uses.
    """
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    params = dict(model.named_parameters(remove_duplicate=False))
    matched = []
    for names in aliases.values():
        candidates = [k for n in names for k in (n, lab_to_hf_name(n))]
        key = next((k for k in candidates if k in files), None)
        if key is None:
            raise ValueError(f"checkpoint={str(checkpoint)!r} has no tensor for parameter {names[0]!r} "
                             f"(looked for {sorted(set(candidates))}); it holds e.g. {list(files)[:3]}")
        shape = files[key].entries[key]["shape"]
        if list(params[names[0]].shape) != shape:
            raise ValueError(f"checkpoint={str(checkpoint)!r}: tensor {key!r} has shape {shape}, but parameter "
                             f"{names[0]!r} needs {list(params[names[0]].shape)}")
        matched.append((names, key))
    unused = sorted(set(files) - {key for _, key in matched})
    if unused:
        raise ValueError(f"checkpoint={str(checkpoint)!r} holds tensors the model does not use: {unused[:5]}")
    return matched


def _layer_of(name: str) -> str:
    """Loading unit of a parameter: ``layers.<i>`` for blocks, else its top-level module."""
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]


def load_lazy(config: GPTConfig, checkpoint: str | Path, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, verify: bool = True, progress: bool = True) -> GPT:
    """A `GPT` in eval mode with ``checkpoint``'s weights, materialised one layer at a time."""
    _check_load(config, device, dtype)
    files = open_checkpoint(checkpoint, mmap=True)
    model = build_on_meta(config)
    units: dict[str, list[tuple[list[str], str]]] = {}
    for names, key in match_parameters(model, files, checkpoint):
        units.setdefault(_layer_of(names[0]), []).append((names, key))
    for unit in tqdm(units.values(), desc="lazy load", unit="layer", disable=not progress):
        for names, key in unit:
            src = files[key].tensor(key, verify=verify)  # view of the mapped file
            param = nn.Parameter(src.to(device=device, dtype=dtype, copy=True))
            for name in names:  # every alias gets the same Parameter: ties survive
                owner, _, attr = name.rpartition(".")
                setattr(model.get_submodule(owner), attr, param)
        for f in {files[key] for _, key in unit}:
            f.release()
    return model.eval()


def load_eager(config: GPTConfig, checkpoint: str | Path, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, verify: bool = True) -> GPT:
    """The baseline: read the whole checkpoint into memory, build a full `GPT`, ``load_state_dict``."""
    _check_load(config, device, dtype)
    files = open_checkpoint(checkpoint, mmap=False)
    model = GPT(config)
    state = {name: files[key].tensor(key, verify=verify)
             for names, key in match_parameters(model, files, checkpoint) for name in names}
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval()


def peak_rss_bytes() -> int:
    """This process's peak resident set size: VmHWM on Linux, else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _report_peak_rss(mode: str, checkpoint: str, config_json: str) -> None:
    """Child-process entry point of `measure_load_peak_rss`: load, then print the peak RSS."""
    config = GPTConfig(**json.loads(config_json))
    if mode == "eager":
        load_eager(config, checkpoint)
    elif mode == "lazy":
        load_lazy(config, checkpoint, progress=False)
    print(peak_rss_bytes())


def measure_load_peak_rss(mode: str, checkpoint: str | Path, config: GPTConfig) -> int:
    """Peak RSS in bytes of a fresh Python process that loads ``checkpoint`` into a CPU `GPT`.

    mode="eager" uses `load_eager`, "lazy" `load_lazy`, "baseline" only imports torch and lab (the
    floor both share). A fresh process per measurement, since a peak can never go down. No mode imports
    ``torch._dynamo`` (`build_on_meta` initialises nothing on the meta device), whose ~150 MB of modules,
    independent of model size, would otherwise land in one mode's peak and not in the baseline.
    """
    check_choice("mode", mode, MODES)
    _check_config(config)
    if not check_path("checkpoint", checkpoint, folder=None).exists():
        raise FileNotFoundError(f"checkpoint={str(checkpoint)!r} does not exist")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = "import sys; from lab.params.lazy import _report_peak_rss; _report_peak_rss(*sys.argv[1:])"
    run = subprocess.run([sys.executable, "-c", code, mode, str(checkpoint), json.dumps(config.to_dict())],
                         capture_output=True, text=True, env=env, cwd=root)
    if run.returncode:
        raise RuntimeError(f"{mode} load of {checkpoint} failed in the child process:\n{run.stderr[-2000:]}")
    return int(run.stdout.split()[-1])
