"""Several processes for one fit: DistributedDataParallel training and a shared reference table.

We do not write our own cluster: processes are started by `torchrun` (or by `spawn`
below, which sets the same environment variables torchrun does), they find each other
through torch.distributed (gloo on CPUs, NCCL on GPUs), and `NormativeModel.fit` notices
an initialised process group through `current()`. Then

* training: every process draws the same global batch (same seed) and trains on its
  slice of it; DDP averages the gradients, so one step is a step on the whole batch and
  the training settings (batch size, steps, patience) mean what they mean in one process;
  the early-stopping decision is taken jointly, and rank 0's weights are broadcast at the
  end so every process samples from the same network;
* the reference table: the level combinations (sex x site x ...) are split across
  processes and the tabulated parts gathered, so every process ends with the table one
  process would have built;
* only rank 0 reports progress and writes the bundle.

This module is the process-group plumbing only; starting a fit in several processes is
normcore.launch (`python -m normcore fit ... --nproc N`, `torchrun --nproc-per-node N -m
normcore fit ...`, or `launch.fit_parallel` from Python).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from normcore.device import resolve_device


@dataclass
class Parallel:
    """This process's place among the processes of one fit, and the collectives it needs
    (it satisfies parallel_protocol.Collectives, which the numeric code types against)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    objects: Any = field(default=None, repr=False)
    """A gloo process group for Python objects (NCCL moves tensors only)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module) -> nn.Module:
        """`net` under DistributedDataParallel (it averages gradients during backward)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(net, device_ids=ids)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch (every world_size-th row)."""
        return batch[self.rank :: self.world_size]

    def mean(self, value: float) -> float:
        """The mean of a number over all processes (for the logged training loss)."""
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one (stop early, time budget, cancel)."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, module: nn.Module) -> None:
        """Overwrite `module`'s weights with rank 0's, in place."""
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def my_items(self, n: int) -> range:
        """The indices among 0..n-1 this process handles (round robin)."""
        return range(self.rank, n, self.world_size)

    def gather_dicts(self, part: dict) -> dict:
        """Merge every process's dict; every process gets the merged dict."""
        parts: list[dict | None] = [None] * self.world_size
        dist.all_gather_object(parts, part, group=self.objects)
        merged: dict = {}
        for p in parts:
            merged.update(p or {})
        return merged


_CURRENT: Parallel | None = None


def current() -> Parallel | None:
    """The running multi-process context (inside `session`), or None in one process."""
    return _CURRENT


def launched() -> bool:
    """True when torchrun (or `spawn`) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[Parallel | None]:
    """Join the process group described by torchrun's environment variables, then leave it.

    Yields None when this process was not launched as one of several, so callers write
    one code path. The backend follows the device: NCCL for GPUs, gloo for CPUs.
    """
    global _CURRENT
    if not launched():
        yield None
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        objects = dist.new_group(backend="gloo") if dev.type == "cuda" else None
        _CURRENT = Parallel(rank, world, local_rank, dev, objects)
        yield _CURRENT
        dist.barrier()
    finally:
        _CURRENT = None
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, target: Callable, args: tuple) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
    )
    target(*args)


def spawn(nproc: int, target: Callable, *args: Any) -> None:
    """Run `target(*args)` in `nproc` fresh processes on this machine, as torchrun would.

    `target` must be importable (a module-level function). A failure in any process
    stops the others and is raised here as a RuntimeError carrying its traceback.
    """
    if nproc < 1:
        raise ValueError(f"the number of processes must be at least 1, got {nproc}")
    import torch.multiprocessing as mp

    try:
        mp.spawn(_worker, args=(nproc, _free_port(), target, args), nprocs=nproc, join=True)
    except mp.ProcessRaisedException as err:
        raise RuntimeError(f"a training process failed:\n{err}") from None
    except mp.ProcessExitedException as err:
        raise RuntimeError(f"a training process died: {err}") from None
