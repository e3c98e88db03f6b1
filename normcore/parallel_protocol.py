"""What the numeric code needs from a group of processes, as a typing Protocol.

Training and the reference table accept an optional `Parallel` (normcore.distributed) to
split their work. They type against this Protocol instead of importing the process-group
module, so numeric code never depends on torch.distributed plumbing (and no import cycle
runs through it). `normcore.distributed.Parallel` satisfies it.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Collectives(Protocol):
    """This process's place among the processes of one fit, and the collectives used."""

    @property
    def world_size(self) -> int: ...

    def wrap(self, net: nn.Module) -> nn.Module:
        """`net` prepared for data-parallel training (gradients averaged over processes)."""
        ...

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's rows of a global batch."""
        ...

    def mean(self, value: float) -> float:
        """The mean of a number over all processes."""
        ...

    def any(self, flag: bool) -> bool:
        """True on every process when it is true on one."""
        ...

    def broadcast(self, module: nn.Module) -> None:
        """Overwrite `module`'s weights with rank 0's, in place."""
        ...

    def my_items(self, n: int) -> range:
        """The indices among 0..n-1 this process handles."""
        ...

    def gather_dicts(self, part: dict) -> dict:
        """Every process's dict merged; every process gets the merged dict."""
        ...
