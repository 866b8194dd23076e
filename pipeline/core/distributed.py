"""Data-parallel training under torchrun: PyTorch's DistributedDataParallel, gloo on
the CPU and NCCL on CUDA. The same command without torchrun is one process, and then
every function here does nothing.

    torchrun --standalone --nproc_per_node=2 -m pipeline.main --bptt truncated

N ranks give the weights that one process gives on the same global batch (to float
tolerance), because each update is split, not changed:

- full BPTT: every rank draws the same shuffled order (same seed) and takes its share
  of each minibatch (rank r: samples r, r + N, ...); a last minibatch of fewer than N
  samples is skipped by every rank;
- truncated BPTT: the lanes are dealt out the same way, and each rank carries its own
  lanes' state from update to update (passed in and out, never kept in module
  buffers, which DDP would overwrite with rank 0's); every lane is equally long, so
  every rank runs the same number of updates;
- each rank's loss is weighted by its share of the update's targets, so the gradient
  DDP averages is the gradient of the loss over the whole global batch, and the
  training loss logged is the global one;
- every rank validates on all of validation (the same weights give the same loss),
  so early stopping and the best epoch agree;
- a signal on any rank stops every rank after the same update;
- rank 0 alone logs to MLflow, writes checkpoints, evaluates and registers; the
  others train and exit. Checkpoints are written at epoch ends (and before the first
  epoch), so a run whose rank died resumes by replaying the epoch it was in;
- a collective that waits longer than `dist_timeout` seconds (a hung rank) fails the
  run instead of stalling it (PyTorch's default is 30 minutes).
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline.core.signals import RankLost


def launched() -> bool:
    """Started by torchrun (any number of ranks, one included)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def size() -> int:
    """The number of ranks: torchrun's WORLD_SIZE, 1 without torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def setup(device: str, timeout_s: float) -> None:
    """Join the process group when launched by torchrun (a group of one for
    --nproc_per_node=1): NCCL when training on CUDA (each rank on its own GPU, by
    LOCAL_RANK), else gloo."""
    if not launched() or active():
        return
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))


def teardown() -> None:
    """Leave the process group together (a barrier first, as PyTorch advises before
    destroy_process_group): once, three ranks on a loaded machine ended with one rank
    aborting as it left ("terminate called without an active exception"), and torchrun
    then stopped rank 0 while it was still logging."""
    if active():
        with guard():
            dist.barrier()
        dist.destroy_process_group()


class DataParallel(DistributedDataParallel):
    """DDP that also answers the wrapped network's attributes (`head`, `readout`), so
    code written for the network runs on it; training calls go through `forward`."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def wrap(net: torch.nn.Module) -> torch.nn.Module:
    """`net` in DDP across the ranks (rank 0's initial weights broadcast), or `net`."""
    if not active():
        return net
    device = next(net.parameters()).device
    return DataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                        forward_sync_buffers=False)  # no module state to share: see above


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's share along the first dimension: rows r, r + N, ..."""
    return t[rank()::size()] if active() else t


def sum_all(*values: float) -> list[float]:
    """Each value summed over the ranks (float64)."""
    return _all_reduce(values, dist.ReduceOp.SUM) if active() else list(values)


def agreed(stop):
    """`stop()` (a caught signal's number, or 0) asked on every rank: the largest, so a
    signal on any rank stops them all after the same update."""
    if not active():
        return stop
    return lambda: int(_all_reduce([stop()], dist.ReduceOp.MAX)[0])


def _all_reduce(values, op) -> list[float]:
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    _collective(dist.all_reduce, t, op=op)
    return t.tolist()


def broadcast(obj):
    """Rank 0's `obj` on every rank (a picklable value)."""
    if not active():
        return obj
    box = [obj]
    _collective(dist.broadcast_object_list, box, src=0)
    return box[0]


def _collective(fn, *args, **kwargs) -> None:
    with guard():
        fn(*args, **kwargs)


@contextlib.contextmanager
def guard():
    """A failed collective (ours, or DDP's gradient all-reduce inside backward) as
    RankLost: the run ends FAILED with one line that says why."""
    try:
        yield
    except RuntimeError as err:
        text = " ".join(str(err).split())
        if not active() or not (isinstance(err, dist.DistError) or "gloo" in text
                                or "NCCL" in text):
            raise
        first = text.split(". This is typically")[0][:300]
        raise RankLost(f"training stopped on rank {rank()} of {size()}: another rank died or "
                       f"hung ({first})") from None
