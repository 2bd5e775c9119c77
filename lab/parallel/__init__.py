"""Chapter 5, distributed training on torch.distributed: launcher, counted collectives, bucketed
data parallelism with gradient accumulation, ZeRO 1/2/3, tensor, pipeline and context parallelism (ring
attention), 2-D meshes, the formulas, and a training CLI."""

from lab.parallel.comm import CommCounter
from lab.parallel.context_parallel import (allgather_attention, context_parallel_gpt, ring_attention,
                                           ring_attention_work, sequence_positions)
from lab.parallel.ddp import DataParallel
from lab.parallel.formulas import (bubble_fraction, context_parallel_elements, mesh_traffic, parallel_plan,
                                   smallest_plans, zero_memory, zero_traffic_elements)
from lab.parallel.launch import launch
from lab.parallel.mesh import Mesh, build_mesh, mesh_ranks, pipeline_data_parallel_stage, tensor_data_parallel_gpt
from lab.parallel.pipeline import (CostStage, PipelineSchedule, gpt_stage, interleaved_order, schedule_order,
                                   simulate_schedule)
from lab.parallel.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, tensor_parallel_block,
                                          tensor_parallel_gpt)
from lab.parallel.zero import ZeroOptimizer

__all__ = [
    "CommCounter", "DataParallel", "bubble_fraction", "parallel_plan", "smallest_plans", "zero_memory",
    "zero_traffic_elements", "launch", "CostStage", "PipelineSchedule", "gpt_stage", "interleaved_order",
    "schedule_order", "simulate_schedule", "ColumnParallelLinear",
    "RowParallelLinear", "tensor_parallel_block", "tensor_parallel_gpt", "ZeroOptimizer", "train",
    "allgather_attention", "context_parallel_elements", "context_parallel_gpt", "ring_attention",
    "ring_attention_work", "sequence_positions",
    "Mesh", "build_mesh", "mesh_ranks", "mesh_traffic", "pipeline_data_parallel_stage", "tensor_data_parallel_gpt",
]


def __getattr__(name: str):
    """``train`` (`lab.parallel.strategies.train`), imported on first use: importing it here eagerly would put
    `lab.parallel.strategies` in sys.modules before ``python -m lab.parallel.strategies`` runs it (runpy's
    RuntimeWarning, and two copies of the module)."""
    if name == "train":
        from lab.parallel.strategies import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
