"""Specialisation: what `triton.runtime.jit.JITFunction.run` does to a launch before it compiles.

Each launch is specialised exactly as a launch on the GPU would be: the kernel's own binder
(``create_function_from_signature``) and ``JITFunction._pack_args`` with the CUDA backend of sm_90, i.e. ints
equal to 1 become constants, ints divisible by 16 and pointers get ``tt.divisibility = 16`` (torch allocations
are 16-byte aligned: the pointers are Triton's ``MockTensor``, address 0). Identical compilations (same
kernel, signature, constants, divisibility attributes and options) are compiled once; each keeps the list of
sources it comes from. Triton 3.9's notice that ``TRITON_DEFAULT_FP_FUSION`` is unset is silenced: the
compile uses Triton's default, as a launch does. Works under the pinned triton and triton 3.6.0 (the GPU
machine's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence

import torch

from lab.kernels.aot.launches import KERNELS, Launch, TensorArg
from lab.kernels.aot.sm90 import target


@dataclasses.dataclass
class Configuration:
    """One distinct compilation and the shapes whose launches need it."""
    name: str                       # e.g. "int8_matmul#3"
    launch: Launch                  # the first launch that needs it
    key: str                        # kernel, signature, constants, attributes, options
    spec: dict                      # readable specialisation (see `specialisation_summary`)
    sources: list[str]


@functools.lru_cache(maxsize=None)
def _binder(kernel: str, fn_id: int):
    """(fn, backend, binder) of a kernel: the sm_90 backend and the argument binder `JITFunction.run` uses."""
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    module_name, attribute = KERNELS[kernel]
    fn = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(fn, JITFunction):
        raise TypeError(f"{module_name}.{attribute} is a {type(fn).__name__}, not a JITFunction: the module was "
                        "imported with TRITON_INTERPRET=1; run the compile check without it")
    backend = make_backend(target())
    return fn, backend, create_function_from_signature(fn.signature, fn.params, backend)


@contextlib.contextmanager
def quiet_fp_fusion_notice() -> Iterator[None]:
    """Triton 3.9 warns that TRITON_DEFAULT_FP_FUSION is unset; the check keeps the default, as a launch does."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*TRITON_DEFAULT_FP_FUSION.*")
        yield


def specialise(launch: Launch):
    """(fn, options, signature, constexprs, attrs) of a launch, built as `JITFunction.run` builds them."""
    from triton import knobs
    from triton.runtime.jit import MockTensor

    module_name, attribute = KERNELS[launch.kernel]
    fn, backend, binder = _binder(launch.kernel, id(getattr(importlib.import_module(module_name), attribute)))
    args = [MockTensor(getattr(torch, a.dtype)) if isinstance(a, TensorArg) else a for a in launch.args]
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):   # 3.6 has the first, 3.9 both
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    with quiet_fp_fusion_notice():
        bound_args, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    return fn, options, signature, constexprs, attrs


def specialisation_summary(fn, options, signature: dict, constexprs: dict, attrs: dict) -> dict:
    """Readable form: declared constexprs, int arguments specialised to 1, divisible-by-16 arguments, dtypes."""
    names = list(signature)
    declared = {p.name for p in fn.params if p.is_constexpr}
    constants = {names[path[0]]: constexprs[path] for path in sorted(constexprs)}
    return {
        "constexprs": {k: v for k, v in constants.items() if k in declared},
        "specialised_to_1": sorted(k for k in constants if k not in declared),
        "divisible_by_16": [names[path[0]] for path in sorted(attrs) if ["tt.divisibility", 16] in attrs[path]],
        "signature": {k: v for k, v in signature.items() if v != "constexpr"},
        "num_warps": options.num_warps,
        "num_stages": options.num_stages,
    }


def compilation_key(launch: Launch, options, signature: dict, constexprs: dict, attrs: dict) -> str:
    attrs_text = {str(k): v for k, v in sorted(attrs.items()) if v}
    options_text = {k: v for k, v in sorted(options.__dict__.items()) if k != "extern_libs"}
    return json.dumps([launch.kernel, signature, {str(k): repr(v) for k, v in sorted(constexprs.items())},
                       attrs_text, repr(options_text)], default=repr)


def configuration(launch: Launch, name: str = "") -> Configuration:
    """The compilation ``launch`` needs (named ``name``, else by its key), with no sources yet."""
    fn, options, signature, constexprs, attrs = specialise(launch)
    key = compilation_key(launch, options, signature, constexprs, attrs)
    return Configuration(name or key, launch, key, specialisation_summary(fn, options, signature, constexprs, attrs), [])


def configurations(launches: Sequence[tuple[str, Launch]]) -> list[Configuration]:
    """The distinct compilations of ``launches`` ((source label, launch) pairs), each with its sources' labels."""
    by_key: dict[str, Configuration] = {}
    counts: Counter = Counter()
    for label, launch in launches:
        config = configuration(launch)
        if config.key not in by_key:
            counts[launch.kernel] += 1
            by_key[config.key] = dataclasses.replace(config, name=f"{launch.kernel}#{counts[launch.kernel]}")
        by_key[config.key].sources.append(label)
    return list(by_key.values())
