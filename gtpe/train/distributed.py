"""Multi-process data-parallel training (DDP) when launched with ``torchrun``.

Usage::

    torchrun --nproc_per_node=4 -m gtpe.cli train configs/zinc/gps+rwse.yaml --out runs/zinc
    # or: torchrun --nproc_per_node=4 $(which gtpe) train ...

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. With ``WORLD_SIZE > 1`` the training
loop initialises the process group (NCCL on CUDA, Gloo on CPU), wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel` and shards the training set with a
:class:`~torch.utils.data.DistributedSampler` (``train.batch_size`` is the per-process batch size,
so the effective batch is ``batch_size * WORLD_SIZE``). Validation/test sets are sharded
round-robin and the predictions gathered, so metrics are computed on every graph exactly once.

Node-level datasets (one graph; every rank holds all of it) split the training (seed) nodes:

- ``train.loader: full``: every rank runs the forward pass over the whole graph, with one random
  stream shared by the ranks (the same dropout masks as a single process), and takes the loss
  over its share of the training nodes, ``train_ids[rank::WORLD_SIZE]`` of the sorted ids, as
  ``W / T`` times its sum of per-node losses (``T`` terms in all), so DDP's average of the
  gradients is the gradient of the single-process mean. The run equals the single-process run
  up to float summation order. It is no faster: each rank still runs the forward and backward
  passes over the whole graph.
- ``train.loader: neighbor``: each epoch's permutation of the seeds is the same on every rank
  and is cut into steps of ``batch_size * WORLD_SIZE`` seeds; rank ``r`` samples the
  neighbourhoods of seeds ``r, r + W, ...`` of each step, and its loss is weighted as above (so
  uneven shares in the last step count right; a rank left without a seed runs a padding batch of
  weight 0). Each rank draws its own neighbour samples and dropout masks. With every fan-out
  ``-1``, no dropout and a model whose output at a seed does not depend on the other nodes of
  its subgraph (message passing over in-edges without a subgraph-degree normalisation such as
  GCN's; no batch statistics; no global attention) this equals one process with
  ``batch_size * WORLD_SIZE`` up to float summation order; otherwise it is that run's
  statistical equivalent (other samples), not its copy.
- Evaluation runs on rank 0 (every validation/test node once) and the metrics are broadcast.
Only rank 0 prints and writes files (results, metrics, checkpoints); checkpoints hold every rank's
RNG state, so ``--resume`` with the same world size continues exactly. :func:`gtpe.train.train`
destroys the process group after the run only when it created it. A run that diverges (see
:mod:`gtpe.train.loop`) stops on every rank at the same step, after rank 0 has written
``results.json``; ``torchrun`` then exits with status 1 (its report shows the workers' status 3).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    'DistEnv',
    'all_gather_objects',
    'all_reduce_min',
    'all_reduce_sum',
    'barrier',
    'broadcast_object',
    'cleanup',
    'init_distributed',
    'is_initialized',
]


@dataclass
class DistEnv:
    """Where this process runs: ``rank`` of ``world_size`` processes, on ``device``."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device('cpu'))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_device(preference: str, local_rank: int) -> torch.device:
    if preference == 'cuda' and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available")
    if preference in ('cuda', 'auto') and torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device('cuda', local_rank % torch.cuda.device_count())
    return torch.device('cpu')


def init_distributed(device: str = 'auto') -> DistEnv:
    """Read torchrun's environment; initialise the process group if ``WORLD_SIZE > 1`` and
    there is none yet (one the caller initialised, with the same ranks, is used as it is)."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def is_initialized() -> bool:
    """Whether this process already belongs to a process group (``init_process_group`` ran)."""
    return dist.is_available() and dist.is_initialized()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few floats over all processes (identity when not distributed)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum of ``tensor`` over all processes, in place and without a host sync
    (``tensor`` itself when not distributed)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of length ``world_size``; ``[obj]`` when not distributed)."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait until every process gets here (nothing when not distributed)."""
    if _active():
        dist.barrier()
