"""lab.kernels.aot.sass: the main loop, instruction classes and the ptxas report, on synthetic input."""

from __future__ import annotations

from lab.kernels.aot import sass as aot_sass

SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;                 /* 0x000fe40000000f00 */
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;           /* 0x000ea8000c1e1900 */
        /*0020*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;  /* 0x000fe20000041804 */
        /*0030*/                   I2F.U32 R5, R6 ;
        /*0040*/              @!P0 BRA 0x20 ;
        /*0050*/                   LDS R7, [R0] ;
        /*0060*/                   IMAD.MOV.U32 R8, RZ, RZ, R9 ;
        /*0070*/                   BRA 0x10 ;
        /*0080*/                   EXIT ;
        /*0090*/                   BRA 0x90;
"""


def test_main_loop_is_the_innermost_backward_branch():
    sass = aot_sass.parse_sass(SASS)
    assert [m for _, m, _ in sass] == ["MOV", "LDG", "HMMA", "I2F", "BRA", "LDS", "IMAD", "BRA", "EXIT", "BRA"]
    assert sorted(aot_sass.loops(sass)) == [(0x10, 0x70), (0x20, 0x40)]      # the self-branch at 0x90 is no loop
    loop = aot_sass.main_loop(sass)
    assert (loop["start"], loop["end"], loop["instructions"]) == ("0x20", "0x40", 3)
    assert loop["mnemonics"] == {"BRA": 1, "HMMA": 1, "I2F": 1}
    assert loop["classes"] == {"memory": 0, "conversion": 1, "fma_mma": 1, "shared": 0, "other": 1}


def test_instruction_classes():
    assert [aot_sass.instruction_class(m) for m in ("LDGSTS", "UTMALDG", "F2FP", "IGMMA", "FFMA", "IMAD", "LDSM", "SHFL")] \
        == ["memory", "memory", "conversion", "fma_mma", "fma_mma", "other", "shared", "other"]


def test_ptxas_report_parsing():
    log = ("ptxas info    : Function properties for k\n    0 bytes stack frame, 8 bytes spill stores, 12 bytes "
           "spill loads\nptxas info    : Used 168 registers, used 1 barriers, 512 bytes smem, 400 bytes cmem[0]\n")
    assert aot_sass.parse_ptxas_report(log) == {"registers": 168, "stack_frame": 0, "spill_stores": 8,
                                           "spill_loads": 12, "static_shared": 512}
    assert aot_sass.parse_ptxas_report("no report") is None
