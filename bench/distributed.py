"""One run across several processes: torch FSDP2 (``fully_shard``) under ``torchrun`` (or SLURM tasks).

Why FSDP2 and not Accelerate or DeepSpeed: it is part of torch (no new dependency, no engine
config file), it shards exactly what does not fit one device for full-parameter unlearning
(parameters, gradients, AdamW state) and it runs on CPU with the gloo backend, so the
multi-process path is tested in CI, not only on a GPU cluster.

What runs where (every process executes the same ``bench.run`` code):

- Checks, the benchmark and the tokenizer: every rank (cheap, deterministic).
- Target and oracle models: rank 0 obtains them first (trains them on a cache miss), the others
  then read them from the model cache; only rank 0 ever writes the cache.
- Unlearning: every rank. ``LossMethod.unlearn`` runs the method's ``prepare`` (NPO's reference
  log-probabilities, a frozen copy for a KL term) on each rank's full model, then trains a sharded
  copy (``sharded_copy``): each rank takes its rows of every batch (rows rank, rank + N, ...; the
  global batch stays ``unlearn.batch_size``), gradients are averaged by FSDP's reduce-scatter. The
  stopping rule's checks run a sharded forward on every rank with the same items (a forward needs
  every rank), so every rank reaches the same verdict. The trained weights are gathered back into
  each rank's full model (``copy_back``).
- Evaluation (every suite, the relearn attacks, lm-eval) and every write (stage cache, record):
  rank 0 only, on its full model; the others wait at a barrier. Attacks therefore fine-tune
  unsharded copies on rank 0: a model whose full fine-tune does not fit one device needs
  ``attack=[lora]``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterable

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Non-zero ranks wait at a barrier while rank 0 trains a missing target/oracle model or evaluates
# every stage (hours at 7B scale); the collective timeout must outlast that, not the default 10-30 min.
BARRIER_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class World:
    """This process's place in a multi-process run (from torchrun's or SLURM's environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def multi(self) -> bool:
        return self.size > 1


def world() -> World:
    """torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else SLURM's task ids (one job = one multi-task run), else 1 process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        size = int(env["WORLD_SIZE"])
        return World(int(env["RANK"]), size, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", size)))
    # SLURM_STEP_*: set by srun for the tasks it started (a batch script's own shell is no rank of a run).
    if int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1 and "SLURM_PROCID" in env:
        size = int(env["SLURM_STEP_NUM_TASKS"])
        per_node = env.get("SLURM_STEP_TASKS_PER_NODE", str(size)).split("(")[0].split(",")[0]  # e.g. "4(x2)"
        return World(int(env["SLURM_PROCID"]), size, int(env.get("SLURM_LOCALID", 0)), int(per_node))
    return World()


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return not initialized() or dist.get_rank() == 0


def init(device: torch.device) -> World:
    """Join the process group (once per process; sweeps reuse it) and pin this rank's GPU."""
    w = world()
    if not w.multi or initialized():
        return w
    if "MASTER_ADDR" not in os.environ:  # SLURM without torchrun: submitit derives the rendezvous
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    if device.type == "cuda":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=w.rank, world_size=w.size,
                            timeout=BARRIER_TIMEOUT)
    log.info("process %d of %d joined (%s)", w.rank, w.size, dist.get_backend())
    return w


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU (LOCAL_RANK) in a multi-process CUDA run, else ``device``."""
    w = world()
    if w.multi and device.type == "cuda":
        return torch.device("cuda", w.local_rank)
    return device


def barrier() -> None:
    if initialized():
        dist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (identity in one process)."""
    if not initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_plan(w: World, device: torch.device, batch_size: int, method: object, method_name: str) -> str | None:
    """Why this multi-process plan cannot run (one line naming the key and the fix), or None."""
    if not w.multi:
        return None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if w.local_size > count:
            return (f"{w.local_size} processes on this node but {count} visible CUDA device(s); "
                    f"launch at most {count} (torchrun --nproc-per-node {count})")
        if device.index is not None:
            return (f"model.device={device} names one GPU but {w.size} processes each take their own (LOCAL_RANK); "
                    "set model.device=auto or cuda")
    if batch_size % w.size:
        return (f"unlearn.batch_size={batch_size} does not split evenly over {w.size} processes; "
                f"use a multiple of {w.size}")
    if not getattr(method, "shardable", False):
        return (f"method {method_name} ({type(method).__name__}) cannot run across processes: "
                f"{getattr(method, 'unshardable_reason', 'not verified under sharding')}; run it with one process")
    return None


def shard_rows(batch, w: World | None = None):
    """This rank's rows of a global batch (rows rank, rank + N, ...); the batch itself in one process."""
    w = w or world()
    if not initialized() or not w.multi:
        return batch
    return type(batch)(*(t[w.rank :: w.size] for t in (batch.input_ids, batch.attention_mask, batch.labels, batch.index)))


def sharded_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` sharded over every rank with FSDP2: each block the model's class names
    as unsplittable (``_no_split_modules``, e.g. LlamaDecoderLayer) is one unit, the rest the root."""
    import copy

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    sharded = copy.deepcopy(model)
    blocks = set(getattr(sharded, "_no_split_modules", None) or [])
    for module in sharded.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    return sharded


def copy_back(sharded: torch.nn.Module, model: torch.nn.Module) -> None:
    """Gather the sharded copy's full weights (a collective) into ``model`` on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    with torch.no_grad():
        model.load_state_dict(full)


def is_sharded(params: Iterable[torch.Tensor]) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in params)


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this rank holds (a DTensor's local shard; a plain tensor itself)."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over every rank (so all take the same decisions on it)."""
    out = value.detach().float().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
