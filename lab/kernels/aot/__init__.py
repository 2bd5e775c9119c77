"""The ahead-of-time tool: every Triton kernel configuration the wrappers launch, compiled for Hopper (sm_90)
on a CPU, no GPU needed, and a static model of the kernels' time from those compiles.

Read in this order: `launches` (what the wrappers pass to their kernels, recorded instead of run), `shapes`
(the registry of what the callers run; they declare their shapes, this tool imports none of them),
`specialise` (what Triton does to a launch before it compiles), `sm90` (the target's limits, occupancy),
`sass` (the ptxas report and the main loop's SASS), `compile` (the pipeline and the check's verdict), `pipes`
and `model` (the static model) and `reading` (what the chapters read from its record). ``python -m lab.bench
static`` runs it all and writes ``results/kernels_sm90.json``.
"""
