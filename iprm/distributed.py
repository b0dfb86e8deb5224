"""Several processes (DDP, `torch.distributed`): how work is split across R ranks and put back together.

Training. A global batch holds R × `instructions_per_batch` whole instructions; rank r forwards the r-th
contiguous part (`iprm.data.sampler.InstructionBatchSampler`), so the global batches are those of one
process with R times as many instructions per batch. The objective then sees the whole global batch:
`gather_rows` concatenates every rank's per-response values in rank order, this rank's own rows keeping
their autograd graph and the others' entering as constants. Every rank thus computes the one-process loss
L, and its backward reaches ∂L/∂(its own responses) only; DDP averages gradients over the R ranks, so the
training step returns R·L, and the averaged gradient is exactly ∇L, for any reduction (CE's mean over
responses, DPO's and NCA's mean over pairs pooled across instructions, balanced weights).

Evaluation and prediction. Each best-of-N set (and the predict file) is cut into the batches one process
would form; batch j goes to rank j mod R (`iprm.data.sampler.ShardedBatchSampler`). The list wraps
around so every rank runs the same number of steps, and a rank short of a batch repeats an early one.
Results are gathered on every rank (torchmetrics states; predictions with `gather_objects`) and the
repeated rows dropped by their row index, so the tables and files are those of one process.

Agreement. A decision that changes which collectives run (a reference forward that FSDP or DeepSpeed shards
is one: every rank must join it) is taken by all ranks together (`any_rank`), never by each rank from its
own batch, or one rank waits forever in a collective the other skipped.

Files. Rank 0 alone writes (export, `flops.json`, metrics, tables, predictions); anything that is a
collective (`trainer.log_dir`, reductions, gathers) is asked on every rank, never behind a rank check.
"""

import torch
import torch.distributed as dist
from torch import Tensor
from torchmetrics.utilities.distributed import gather_all_tensors


def world() -> tuple[int, int]:
    """(number of ranks, this rank): (1, 0) unless a process group is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def gather_rows(tensor: Tensor) -> Tensor:
    """Every rank's rows of `tensor` (dim 0; the count may differ between ranks), concatenated in rank order.
    This rank's rows are `tensor` itself, gradients and all; the other ranks' rows are constants. Other
    dimensions must agree between ranks."""
    size, rank = world()
    if size == 1:
        return tensor
    parts = gather_all_tensors(tensor.detach().contiguous())
    parts[rank] = tensor
    return torch.cat(parts)


def gather_objects(value: object) -> list:
    """`value` from every rank, in rank order (picklable objects); [value] in one process."""
    size, _ = world()
    if size == 1:
        return [value]
    gathered = [None] * size
    dist.all_gather_object(gathered, value)
    return gathered


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether `flag` holds on any rank: the same answer on every rank (a collective, so every rank must
    call it). `device` is where the process group's backend can reduce (CUDA for NCCL)."""
    size, _ = world()
    if size == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
