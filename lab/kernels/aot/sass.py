"""Reading a compiled kernel: the ptxas report (registers, spills, shared memory) and the SASS of its main loop.

Counting rules (main loop). The cubin is disassembled with the wheel's ``cuobjdump -sass``. Loops are the
backward branches (a BRA to a lower address; the ``BRA`` to itself after EXIT is not a loop); the main loop
is, among the innermost loops (those containing no other loop), the one with the most fma_mma
instructions, ties broken by length: the K loop of the matmuls, the block loop of paged attention. Its
instructions are counted statically from the branch target to the back edge, each once (one iteration;
predicated and conditionally skipped instructions count too). A mnemonic is the opcode before the first dot
(``HMMA.16816.F32.BF16`` → HMMA), and its class:

* memory: global / local / generic memory and TMA — LDG, STG, LD, ST, LDL, STL, LDGSTS, LDGDEPBAR, ATOM,
  ATOMG, RED, REDG, UBLKCP, UTMA* (UTMALDG, UTMASTG, UTMAPF, ...);
* conversion: F2F, F2FP, F2I, I2F, I2I, I2FP, F2IP, I2IP, FRND;
* fma_mma: floating-point FMA / MUL / ADD (FFMA, FMUL, FADD, HFMA2, HMUL2, HADD2, DFMA, DMUL, DADD), the
  tensor cores (HMMA, IMMA, HGMMA, IGMMA, QGMMA) and IDP. IMAD is *not* counted here: ptxas uses it for
  address arithmetic, moves (IMAD.MOV) and shifts (IMAD.SHL), not for the kernel's arithmetic;
* shared: LDS, STS, LDSM, STSM, ATOMS;
* other: everything else (integer ALU, IMAD, predicates, branches, barriers, MUFU, uniform datapath, NOP).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from lab.kernels.aot.sm90 import ARCH

MNEMONIC_CLASSES = {
    "memory": {"LDG", "STG", "LD", "ST", "LDL", "STL", "LDGSTS", "LDGDEPBAR", "ATOM", "ATOMG", "RED", "REDG",
               "UBLKCP"},
    "conversion": {"F2F", "F2FP", "F2I", "I2F", "I2I", "I2FP", "F2IP", "I2IP", "FRND"},
    "fma_mma": {"FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2", "DFMA", "DMUL", "DADD", "HMMA", "IMMA", "HGMMA",
                "IGMMA", "QGMMA", "IDP"},
    "shared": {"LDS", "STS", "LDSM", "STSM", "ATOMS"},
}
INSTRUCTION_CLASSES = (*MNEMONIC_CLASSES, "other")
TENSOR_CORE_MNEMONICS = {"HMMA", "IMMA", "HGMMA", "IGMMA", "QGMMA"}


def _tool(name: str) -> str:
    """Path of a CUDA tool of the triton wheel (``knobs.nvidia.<name>``, which honours TRITON_<NAME>_PATH)."""
    from triton import knobs

    return getattr(knobs.nvidia, name).path


def parse_ptxas_report(log: str) -> dict | None:
    """{"registers", "stack_frame", "spill_stores", "spill_loads", "static_shared"} from ``ptxas -v``, or None."""
    registers = re.search(r"Used (\d+) registers", log)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if not (registers and frame):
        return None
    smem = re.search(r"(\d+) bytes smem", log)
    return {"registers": int(registers[1]), "stack_frame": int(frame[1]), "spill_stores": int(frame[2]),
            "spill_loads": int(frame[3]), "static_shared": int(smem[1]) if smem else 0}


def run_ptxas(ptx: str, workdir: Path) -> dict:
    """``ptxas -v`` on the PTX for its own target (a fallback: Triton's own report is used when it printed one),
    with the ptxas Triton picks for sm_90 (3.9: the wheel's ptxas-blackwell, 3.6: its ptxas)."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = re.search(r"^\.target\s+(\w+)", ptx, re.M)[1]
    ptx_path = workdir / "kernel.ptx"
    ptx_path.write_text(ptx)
    result = subprocess.run([get_ptxas(ARCH).path, "-v", "-lineinfo", f"--gpu-name={arch}", str(ptx_path), "-o",
                             str(workdir / "ptxas.cubin")], capture_output=True, text=True, check=True)
    report = parse_ptxas_report(result.stderr + result.stdout)
    if report is None:
        raise RuntimeError(f"cannot parse the ptxas report:\n{result.stderr}")
    return report


SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)([.A-Z0-9_]*)\s*([^;]*);")


def parse_sass(text: str) -> list[tuple[int, str, str]]:
    """[(address, mnemonic, operands)] of ``cuobjdump -sass`` output."""
    return [(int(m[1], 16), m[3], m[5].strip()) for m in SASS_LINE.finditer(text)]


def disassemble_text(cubin: bytes, workdir: Path) -> str:
    """The cubin's SASS, as the wheel's ``cuobjdump -sass`` prints it."""
    path = workdir / "kernel.cubin"
    path.write_bytes(cubin)
    return subprocess.run([_tool("cuobjdump"), "-sass", str(path)], capture_output=True, text=True, check=True).stdout


LOAD_BYTES = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}   # a width modifier → bytes per thread


def global_load_bytes(text: str, start: int, end: int) -> list[int]:
    """Bytes per thread of each global load (LDG, and the asynchronous LDGSTS) between two SASS addresses:
    the width modifier of the instruction (``LDG.E.128`` → 16, ``.64`` → 8, ``.U8`` → 1), 4 without one."""
    widths = []
    for match in SASS_LINE.finditer(text):
        if match[3] in ("LDG", "LDGSTS") and start <= int(match[1], 16) <= end:
            widths.append(next((LOAD_BYTES[m] for m in match[4].split(".") if m in LOAD_BYTES), 4))
    return widths


def instruction_class(mnemonic: str) -> str:
    if mnemonic.startswith("UTMA"):
        return "memory"
    return next((name for name, members in MNEMONIC_CLASSES.items() if mnemonic in members), "other")


def loops(sass: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """(head, back edge) addresses of every backward branch (the self-branch after EXIT excluded)."""
    found = []
    for address, mnemonic, operands in sass:
        target_address = re.search(r"0x([0-9a-f]+)\s*$", operands) if mnemonic == "BRA" else None
        if target_address and int(target_address[1], 16) < address:
            found.append((int(target_address[1], 16), address))
    return found


def main_loop(sass: list[tuple[int, str, str]]) -> dict | None:
    """Start, end, class counts and mnemonic counts of one iteration of the main loop (see the module docstring)."""
    candidates = loops(sass)
    innermost = [(a, b) for a, b in candidates
                 if not any((a, b) != (c, d) and a <= c and d <= b for c, d in candidates)]
    if not innermost:
        return None

    def body(loop: tuple[int, int]) -> list[str]:
        return [mnemonic for address, mnemonic, _ in sass if loop[0] <= address <= loop[1]]

    def weight(loop: tuple[int, int]) -> tuple[int, int]:
        mnemonics = body(loop)
        return sum(instruction_class(m) == "fma_mma" for m in mnemonics), len(mnemonics)

    start, end = max(innermost, key=weight)
    mnemonics = Counter(body((start, end)))
    classes = {name: 0 for name in INSTRUCTION_CLASSES}
    for mnemonic, count in mnemonics.items():
        classes[instruction_class(mnemonic)] += count
    return {"start": hex(start), "end": hex(end), "instructions": sum(mnemonics.values()), "classes": classes,
            "mnemonics": dict(sorted(mnemonics.items(), key=lambda item: (-item[1], item[0])))}
