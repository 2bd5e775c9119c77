"""lab.parallel's bad-input table (see `tests.bad_input`): every public name refuses the realistic mistakes.

Nothing here spawns a process: the constructors that need a process group refuse their bad arguments before they
ask for one; the few checks that only a group can make (a forward's input width, `PipelineSchedule.run`) run in a
one-process gloo group of this process (`in_group`), as test_pipeline's single-stage test does.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn

from lab.parallel import (ColumnParallelLinear, CostStage, DataParallel, PipelineSchedule, RowParallelLinear,
                          ZeroOptimizer, allgather_attention, bubble_fraction, context_parallel_elements,
                          context_parallel_gpt, gpt_stage, interleaved_order, launch, parallel_plan, ring_attention,
                          ring_attention_work, schedule_order, sequence_positions, simulate_schedule, smallest_plans,
                          tensor_parallel_block, tensor_parallel_gpt, train, zero_memory, zero_traffic_elements)
from lab.parallel.formulas import H100_SXM, LLAMA2_7B, LLAMA2_70B, mesh_traffic
from lab.parallel.mesh import Mesh, build_mesh, mesh_ranks, pipeline_data_parallel_stage, tensor_data_parallel_gpt
from tests.bad_input import NOT_GPT, Bad, T, V
from tests.tiny_models import tiny_config, tiny_gpt

gpt = functools.cache(tiny_gpt)
PLAN = dict(tp=1, pp=1, dp=8, zero_stage=1, micro_batch=1, seq_len=4096, global_batch=64)
ORDER = [("F", 0), ("B", 0)]


def in_group(call):
    """``call`` run inside a one-process gloo group (a HashStore in this process: nothing is spawned)."""
    def run():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        try:
            return call()
        finally:
            dist.destroy_process_group()
    return run


def plan(**changes):
    return lambda: parallel_plan(LLAMA2_7B, H100_SXM, **{**PLAN, **changes})


def plans(**changes):
    return lambda: smallest_plans(**{"model": LLAMA2_7B, "gpu": H100_SXM, "tokens": 1e12, "max_days": 10, **changes})


GROUP = r"group must be None \(the default group\) or a .*ProcessGroup, got 2"


def pipe(stage=None, n_micro=2, schedule="gpipe", act_shape=(1, 4), **kwargs):
    return lambda: PipelineSchedule(CostStage(4, 0, 0) if stage is None else stage, n_micro, schedule, act_shape,
                                    **kwargs)


def frozen():
    lin = nn.Linear(2, 2)
    lin.requires_grad_(False)
    return lin


def mixed_dtypes():
    lin = nn.Linear(2, 2)
    lin.bias.data = lin.bias.data.bfloat16()
    return lin


TOKENS = torch.arange(200) % 61
QKV = (torch.ones(1, 4, 6, 2), torch.ones(1, 2, 6, 2), torch.ones(1, 2, 6, 2))   # q (B, H, T/N, D), k, v (H_kv = 2)


def attention_cases(attend) -> list[Bad]:
    """The refusals `ring_attention` and `allgather_attention` share (one check, `_check_qkv`)."""
    q, k, v = QKV
    return [
        Bad(lambda: attend(q, k, v, group=2), TypeError, GROUP),
        V(lambda: attend(q, k, v, layout="striped"), r"layout='striped' is not allowed"),
        T(lambda: attend(q.tolist(), k, v), "q must be a torch.Tensor, got list"),
        V(lambda: attend(q[0], k, v), r"q must have 4 dimensions, got shape \(4, 6, 2\)"),
        T(lambda: attend(q, k.long(), v), "k must be a floating-point tensor, got torch.int64"),
        T(lambda: attend(q, k, v.double()), "q, k and v must share one dtype"),
        V(lambda: attend(q[:, :3], k, v), r"with H_kv dividing H, got q \(1, 3, 6, 2\)"),
        V(lambda: attend(q, k, v[:, :, :5]), r"k \(1, 2, 6, 2\), v \(1, 2, 5, 2\)"),
        V(in_group(lambda: attend(q[:, :, :3], k[:, :, :3], v[:, :, :3], layout="zigzag")),
          r"the sequence length N·\(T/N\) = 1·3 must be divisible by 2 for layout='zigzag' with N=1"),
    ]


def run(strategy="single", config=None, tokens=TOKENS, **changes):
    """`train` of the tiny config with one argument made bad; a distributed strategy's arguments are refused
    before it asks for its process group."""
    args = dict(steps=1, batch_size=2, seq_len=8) | changes
    return lambda: train(strategy, tiny_config() if config is None else config, tokens, **args)


CASES: dict[str, list[Bad]] = {
    "DataParallel": [
        Bad(lambda: DataParallel(nn.Linear(2, 2), group=2), TypeError, GROUP),
        Bad(lambda: DataParallel("model"), TypeError, "module must be an nn.Module"),
        Bad(lambda: DataParallel(nn.Linear(2, 2), bucket_cap_mb=0), ValueError, "bucket_cap_mb=0"),
        Bad(lambda: DataParallel(nn.Linear(2, 2), bucket_cap_mb=True), TypeError, "bucket_cap_mb must be a real"),
        Bad(lambda: DataParallel(nn.Linear(2, 2), bucket_cap_mb=float("nan")), ValueError, "bucket_cap_mb=nan"),
    ],
    "bubble_fraction": [
        Bad(lambda: bubble_fraction(4, 0), ValueError, "m=0"),
        Bad(lambda: bubble_fraction(True, 8), TypeError, "pp must be an int"),
        Bad(lambda: bubble_fraction(0, 8), ValueError, "pp=0"),
        Bad(lambda: bubble_fraction(4, 8, 2.0), TypeError, "chunks must be an int"),
    ],
    "parallel_plan": [
        Bad(plan(zero_stage=5), ValueError, "zero_stage=5"),
        Bad(plan(zero_stage=True), TypeError, "zero_stage must be one of"),
        Bad(plan(tp=True), TypeError, "tp must be an int"),
        Bad(plan(seq_len=0), ValueError, "seq_len=0"),
        Bad(plan(hfu=0), ValueError, "hfu=0"),
        Bad(plan(hfu=1.5), ValueError, "hfu=1.5"),
        Bad(plan(checkpointing=1), TypeError, "checkpointing must be True or False"),
        Bad(plan(global_batch=100), ValueError, "global_batch=100"),
        Bad(lambda: parallel_plan("llama", H100_SXM, **PLAN), TypeError, "model and gpu must be"),
        Bad(lambda: parallel_plan(LLAMA2_70B, H100_SXM, 8, 3, 1, 1, 1, 4096, 8), ValueError, "pp=3"),
        Bad(lambda: parallel_plan(LLAMA2_70B, H100_SXM, 16, 1, 1, 1, 1, 4096, 8), ValueError, "tp=16"),
    ],
    "smallest_plans": [
        Bad(plans(max_days=0), ValueError, "max_days=0"),
        Bad(plans(tokens=float("nan")), ValueError, "tokens=nan"),
        Bad(plans(gpu="h100"), TypeError, "model and gpu must be"),
        Bad(plans(tps=8), TypeError, r"tps must be a list or tuple, got 8 \(int\)"),
        Bad(plans(tps=()), ValueError, r"tps=\(\) is empty"),
        Bad(plans(tps=(16,)), ValueError, r"tps\[0\]=16"),
        Bad(plans(tps=(2.0,)), TypeError, r"tps\[0\] must be an int"),
        Bad(plans(zero_stages=1), TypeError, r"zero_stages must be a list or tuple, got 1 \(int\)"),
        Bad(plans(zero_stages=[]), ValueError, r"zero_stages=\[\] is empty"),
        Bad(plans(zero_stages=(4,)), ValueError, r"zero_stages\[0\]=4"),
        Bad(plans(micro_batch=3), ValueError, "micro_batch=3 must divide global_batch=1024"),
        Bad(plans(hfu=0), ValueError, "hfu=0"),
    ],
    "zero_memory": [
        Bad(lambda: zero_memory(10, 2, True), TypeError, "stage must be one of"),
        Bad(lambda: zero_memory(10, 2, 4), ValueError, "stage=4"),
        Bad(lambda: zero_memory(10, 0, 1), ValueError, "n=0"),
        Bad(lambda: zero_memory(2.5, 2, 1), TypeError, "psi must be an int"),
        Bad(lambda: zero_memory(True, 2, 1), TypeError, "psi must be an int"),
        Bad(lambda: zero_memory(10, 2, 1, param_bytes=-2), ValueError, "param_bytes=-2"),
        Bad(lambda: zero_memory(10, 2, 1, k=float("nan")), ValueError, "k=nan"),
    ],
    "zero_traffic_elements": [
        Bad(lambda: zero_traffic_elements(-10, 1), ValueError, "psi=-10"),
        Bad(lambda: zero_traffic_elements(1e9, 1), TypeError, "psi must be an int"),
        Bad(lambda: zero_traffic_elements(10, 4), ValueError, "stage=4"),
    ],
    "launch": [
        Bad(lambda: launch(5, 1), TypeError, "fn must be a function"),
        Bad(lambda: launch(lambda: None, 1), TypeError, "fn=.* must be picklable"),
        Bad(lambda: launch(len, 0), ValueError, "world_size=0"),
        Bad(lambda: launch(len, 2.0), TypeError, "world_size must be an int"),
        Bad(lambda: launch(len, 1, backend="mpi"), ValueError, "backend='mpi'"),
        Bad(lambda: launch(len, 1, backend=""), ValueError, "backend=''"),
        Bad(lambda: launch(len, torch.cuda.device_count() + 1, backend="nccl"), ValueError,
            "backend='nccl' needs one CUDA GPU per rank"),
        Bad(lambda: launch(len, 1, timeout=0), ValueError, "timeout=0"),
        Bad(lambda: launch(len, 1, threads=0), ValueError, "threads=0"),
    ],
    "CostStage": [
        Bad(lambda: CostStage(0, 0, 0), ValueError, "width=0"),
        Bad(lambda: CostStage(2.5, 0, 0), TypeError, "width must be an int"),
        Bad(lambda: CostStage(4, -1, 0), ValueError, "t_forward=-1"),
        Bad(lambda: CostStage(4, 0, float("nan")), ValueError, "t_backward=nan"),
        Bad(lambda: CostStage(4, 0, 0)(torch.ones(2, 3)), ValueError, r"x has shape \(2, 3\)"),
        Bad(lambda: CostStage(4, 0, 0)(torch.ones(2, 1)), ValueError, r"x has shape \(2, 1\)"),  # would broadcast
        Bad(lambda: CostStage(4, 0, 0)([1.0] * 4), TypeError, "x must be a torch.Tensor"),
    ],
    "PipelineSchedule": [
        Bad(pipe(group=2), TypeError, GROUP),
        Bad(pipe(n_micro=0), ValueError, "n_micro=0"),
        Bad(pipe(schedule="zb"), ValueError, "schedule='zb'"),
        Bad(pipe(stage="stage"), TypeError, "stage must be an nn.Module"),
        Bad(pipe(stage=nn.Identity()), ValueError, "stage has no parameters"),
        Bad(pipe(act_shape=4), TypeError, "act_shape must be a tuple of ints"),
        Bad(pipe(act_shape=(1, -4)), ValueError, "act_shape's size=-4"),
        Bad(pipe(act_dtype=torch.int64), ValueError, "act_dtype=torch.int64"),
        Bad(pipe(loss_fn="mse"), TypeError, "loss_fn must be a function"),
        Bad(in_group(lambda: pipe(loss_fn=nn.MSELoss())().run(torch.ones(3, 4), torch.ones(3, 4))), ValueError,
            r"inputs must be a tensor whose batch size is divisible by n_micro=2"),
        Bad(in_group(lambda: pipe(loss_fn=nn.MSELoss())().run([[1.0] * 4] * 2, torch.ones(2, 4))), TypeError,
            "inputs must be a torch.Tensor"),
        Bad(in_group(lambda: pipe()().run(torch.ones(2, 4), torch.ones(2, 4))), ValueError, "loss_fn=None"),
    ],
    "gpt_stage": [
        Bad(lambda: gpt_stage(gpt(), group=2), TypeError, GROUP),
        Bad(lambda: gpt_stage("gpt"), TypeError, "model must be a lab GPT"),
        Bad(in_group(lambda: gpt_stage(gpt(), layers_per_stage=[1, 1])), ValueError, r"layers_per_stage=\[1, 1\]"),
        Bad(in_group(lambda: gpt_stage(gpt(), layers_per_stage="2")), TypeError, "layers_per_stage must be a list"),
    ],
    "interleaved_order": [
        Bad(lambda: interleaved_order(4, 0, 6, 2), ValueError, "n_micro=6 must be a multiple of n_stages=4"),
        Bad(lambda: interleaved_order(4, 0, 8, 0), ValueError, "n_chunks=0"),
        Bad(lambda: interleaved_order(4, 4, 8, 2), ValueError, "stage=4"),
        Bad(lambda: interleaved_order(True, 0, 8, 2), TypeError, "n_stages must be an int"),
    ],
    "schedule_order": [
        Bad(lambda: schedule_order("zb", 2, 0, 1), ValueError, "schedule='zb'"),
        Bad(lambda: schedule_order("1f1b", 2, 2, 1), ValueError, "stage=2"),
        Bad(lambda: schedule_order("gpipe", 2, 0, 0), ValueError, "n_micro=0"),
        Bad(lambda: schedule_order("gpipe", 2, 0, 1.5), TypeError, "n_micro must be an int"),
    ],
    "simulate_schedule": [
        Bad(lambda: simulate_schedule([ORDER], 0, 1.0), ValueError, "t_forward=0"),
        Bad(lambda: simulate_schedule([ORDER], 1.0, float("nan")), ValueError, "t_backward=nan"),
        Bad(lambda: simulate_schedule("FB", 1.0, 1.0), TypeError, "orders must be a list"),
        Bad(lambda: simulate_schedule([], 1.0, 1.0), ValueError, r"len\(orders\)=0"),
        Bad(lambda: simulate_schedule([[]], 1.0, 1.0), ValueError, r"orders=\[\[\]\] holds no step"),
        Bad(lambda: simulate_schedule(ORDER, 1.0, 1.0), TypeError, "orders must hold steps"),  # one stage unwrapped
        Bad(lambda: simulate_schedule([[("f", 0), ("b", 0)]], 1.0, 1.0), ValueError, "orders' kind='f'"),
        Bad(lambda: simulate_schedule([[("F", -1, 0)]], 1.0, 1.0), ValueError, "orders' chunk=-1"),
        Bad(lambda: simulate_schedule([[("F", 0.5)]], 1.0, 1.0), TypeError, "orders' micro-batch must be an int"),
        Bad(lambda: simulate_schedule([[("B", 0), ("F", 0)]] * 2, 1.0, 1.0), ValueError, "orders deadlock"),
    ],
    "ColumnParallelLinear": [
        Bad(lambda: ColumnParallelLinear(nn.Linear(4, 6), group=2), TypeError, GROUP),
        Bad(lambda: ColumnParallelLinear("linear"), TypeError, "linear must be an nn.Linear"),
        Bad(lambda: ColumnParallelLinear(nn.Conv1d(4, 4, 1)), TypeError, "linear must be an nn.Linear"),
        Bad(lambda: ColumnParallelLinear(nn.Linear(4, 4), "no"), TypeError, "copy_input must be True or False"),
        Bad(in_group(lambda: ColumnParallelLinear(nn.Linear(4, 6))(torch.ones(2, 5))), ValueError,
            r"x has shape \(2, 5\).*in_features=4"),
    ],
    "RowParallelLinear": [
        Bad(lambda: RowParallelLinear(nn.Linear(4, 6), 2), TypeError, GROUP),
        Bad(lambda: RowParallelLinear(torch.zeros(2, 2)), TypeError, "linear must be an nn.Linear"),
        Bad(in_group(lambda: RowParallelLinear(nn.Linear(4, 6))(torch.ones(2, 6))), ValueError,
            r"x has shape \(2, 6\).*in_features=4"),
    ],
    "tensor_parallel_block": [
        Bad(lambda: tensor_parallel_block(gpt().layers[0], 2), TypeError, GROUP),
        Bad(lambda: tensor_parallel_block(gpt()), TypeError, "block must be a lab GPT Block"),
        Bad(lambda: tensor_parallel_block(nn.Linear(2, 2)), TypeError, "block must be a lab GPT Block"),
    ],
    "tensor_parallel_gpt": [
        Bad(lambda: tensor_parallel_gpt(gpt(), 2), TypeError, GROUP),
        Bad(lambda: tensor_parallel_gpt(gpt().layers[0]), TypeError, "model must be a lab GPT"),
        Bad(lambda: tensor_parallel_gpt("gpt"), TypeError, "model must be a lab GPT"),
    ],
    "ZeroOptimizer": [
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW, 1, group=2), TypeError, GROUP),
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW, 4), ValueError, "stage=4"),
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW, True), TypeError, "stage must be one of"),
        Bad(lambda: ZeroOptimizer("model", torch.optim.AdamW, 1), TypeError, "module must be an nn.Module"),
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW(nn.Linear(2, 2).parameters()), 1), TypeError,
            "optimizer_cls must be an optimizer class"),
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW, 1, 0.01), TypeError, "units must be a list"),
        Bad(lambda: ZeroOptimizer(gpt(), torch.optim.AdamW, 1, gpt().layers[0]), TypeError, "units must be a list"),
        Bad(lambda: ZeroOptimizer(nn.Linear(2, 2), torch.optim.AdamW, 1, [nn.Linear(2, 2)]), ValueError,
            r"units\[0\] is not a submodule of module"),
        Bad(lambda: ZeroOptimizer(frozen(), torch.optim.AdamW, 1), ValueError, "module has no parameter"),
        Bad(lambda: ZeroOptimizer(mixed_dtypes(), torch.optim.AdamW, 1), ValueError,
            "module: the trained parameters of one unit must share one dtype"),
    ],
    "train": [
        V(run(strategy="fsdp"), r"strategy='fsdp' is not allowed"),
        T(run(config={"vocab_size": 61}), r"config must be a GPTConfig, got \{'vocab_size': 61\} \(dict\)"),
        T(run(tokens=TOKENS.tolist()), r"tokens must be a torch\.Tensor, got list"),
        T(run(tokens=TOKENS.float()), r"tokens must have a dtype in \(torch\.int64,\)"),
        V(run(tokens=TOKENS + 61), r"tokens must hold ids in \[0, 61\) \(config\.vocab_size\), got \[61, 121\]"),
        V(run(tokens=TOKENS[:9]), r"tokens has 9 entries; need more than seq_len\+1=9"),
        T(run("ddp", steps=True), r"steps must be an int, got True"),
        V(run("zero2", seq_len=17), r"seq_len=17 is out of range; allowed: \[1, 16\]"),
        V(run("ddp", lr=0.0), r"lr=0\.0 is out of range"),
        V(run("tp", warmup=-1), r"warmup=-1 is out of range"),
        T(run(seed=1.5), r"seed must be an int, got 1\.5"),
        V(run("pp", batch_size=3, n_micro=2), r"n_micro=2 is not allowed; use a divisor of batch_size=3"),
        V(run("pp", schedule="zero-bubble"), r"schedule='zero-bubble' is not allowed"),
        V(run("ddp", bucket_cap_mb=0), r"bucket_cap_mb=0 is out of range"),
        V(run("ddp"), r"strategy='ddp' needs a process group"),
        T(run(return_state=1), r"return_state must be one of \(False, True\), got the int 1"),
        V(run("tp×dp", inner=0), r"inner=0 is out of range"),
        V(in_group(run("pp×dp", inner=2)), r"inner=2 is not allowed; use a divisor of the world size=1"),
    ],
}

CASES |= {
    "ring_attention": attention_cases(ring_attention),
    "allgather_attention": attention_cases(allgather_attention),
    "sequence_positions": [
        V(lambda: sequence_positions(0, 2, 0), r"seq_len=0 is out of range"),
        T(lambda: sequence_positions(8, True, 0), r"n must be an int, got True"),
        V(lambda: sequence_positions(8, 2, 2), r"rank=2 is out of range; allowed: \[0, 1\]"),
        V(lambda: sequence_positions(8, 2, 0, "ring"), r"layout='ring' is not allowed"),
        V(lambda: sequence_positions(6, 2, 0, "zigzag"), r"seq_len=6 must be divisible by 4 for layout='zigzag'"),
    ],
    "ring_attention_work": [
        T(lambda: ring_attention_work(8.0, 2), r"seq_len must be an int, got 8\.0"),
        V(lambda: ring_attention_work(8, 0), r"n=0 is out of range"),
        V(lambda: ring_attention_work(9, 2), r"seq_len=9 must be divisible by 2 for layout='contiguous'"),
        V(lambda: ring_attention_work(8, 2, layout=None), r"layout=None is not allowed"),
    ],
    "context_parallel_gpt": [
        T(lambda: context_parallel_gpt("gpt"), NOT_GPT),
        T(lambda: context_parallel_gpt(gpt().layers[0]), NOT_GPT),
        V(lambda: context_parallel_gpt(gpt(), layout="striped"), r"layout='striped' is not allowed"),
        Bad(lambda: context_parallel_gpt(gpt(), group=2), TypeError, GROUP),
        T(in_group(lambda: context_parallel_gpt(gpt())(torch.ones(1, 4))), r"idx must have a dtype in"),
        V(in_group(lambda: context_parallel_gpt(gpt())(torch.ones(4, dtype=torch.int64))), r"idx must have 2 dim"),
        V(in_group(lambda: context_parallel_gpt(gpt())(torch.ones(1, 3, dtype=torch.int64))),
          r"the sequence length N·\(T/N\) = 1·3 must be divisible by 2 for layout='zigzag'"),
    ],
    "context_parallel_elements": [
        V(lambda: context_parallel_elements(1, 8, 4, 0), r"cp=0 is out of range"),
        T(lambda: context_parallel_elements(1, 8, True, 2), r"kv_width must be an int, got True"),
        V(lambda: context_parallel_elements(1, 9, 4, 2), r"seq_len=9 must be divisible by cp=2"),
        V(lambda: context_parallel_elements(1, 8, 4, 2, "tree"), r"method='tree' is not allowed"),
    ],
}

NO_INPUT: dict[str, str] = {
    "CommCounter": "takes no argument: a context manager that counts the collectives made while it is open",
    "Mesh": "a record of this rank's place and groups that only build_mesh makes",
}

MESH = Mesh(1, 1, 0, 0, None, None)        # a 1 × 1 grid's record: the builders check their arguments before its groups
TRAFFIC = dict(psi_local=100, tp=2, pp=2, dp=2, stage=0, layers=1, micro_batch=1, m=2, seq_len=8, d_model=4)


def mesh_builder_cases(build) -> list[Bad]:
    """The refusals `tensor_data_parallel_gpt` and `pipeline_data_parallel_stage` share (one check, `_check_args`)."""
    return [T(lambda: build("gpt", MESH), NOT_GPT), T(lambda: build(gpt().layers[0], MESH), NOT_GPT),
            T(lambda: build(gpt(), (2, 2)), r"mesh must be a Mesh \(lab\.parallel\.mesh\.build_mesh\), got \(2, 2\)"),
            V(lambda: build(gpt(), MESH, bucket_cap_mb=0), r"bucket_cap_mb=0 is out of range")]


CASES |= {
    "mesh_ranks": [V(lambda: mesh_ranks(2, 0), r"inner=0 is out of range"),
                   T(lambda: mesh_ranks(True, 2), r"outer must be an int, got True")],
    "build_mesh": [V(lambda: build_mesh(0, 2), r"outer=0 is out of range"),
                   T(lambda: build_mesh(2, 2.0), r"inner must be an int, got 2\.0"),
                   V(in_group(lambda: build_mesh(2, 2)), r"outer=2 times inner=2 must equal the world size 1")],
    "tensor_data_parallel_gpt": mesh_builder_cases(tensor_data_parallel_gpt),
    "pipeline_data_parallel_stage": mesh_builder_cases(pipeline_data_parallel_stage),
    "mesh_traffic": [V(lambda: mesh_traffic(**{**TRAFFIC, "psi_local": -1.0}), r"psi_local=-1\.0 is out of range"),
                     T(lambda: mesh_traffic(**{**TRAFFIC, "tp": 2.0}), r"tp must be an int, got 2\.0"),
                     V(lambda: mesh_traffic(**{**TRAFFIC, "stage": 2}), r"stage=2 is out of range; allowed: \[0, 1\]"),
                     V(lambda: mesh_traffic(**{**TRAFFIC, "m": 0}), r"m=0 is out of range"),
                     T(lambda: mesh_traffic(**TRAFFIC, checkpointing=1), r"checkpointing must be one of"),
                     V(lambda: mesh_traffic(**TRAFFIC, zero_stage=4), r"zero_stage=4 is not allowed")],
}
