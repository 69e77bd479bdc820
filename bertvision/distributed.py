"""Data-parallel training across processes, in plain `torch.distributed` (no Ray here).

A `World` is this process's place among the ranks training one model: rank ``r`` of ``size``.
The library's loops (`bertvision.train.fit_head`, `bertvision.finetune`) take one; the default,
``World()`` (rank 0 of 1), is a single process and changes nothing. Ray Train (`ray_jobs/train.py`)
starts the ranks, sets up the process group (gloo on CPU, NCCL on GPU) and passes
``World.current()``. What every loop does with it:

* the model is wrapped in `DistributedDataParallel` when ``size > 1`` (gradients averaged over
  ranks after each backward); with one rank it is left as is, so one worker computes exactly
  what the single-process loop computes;
* each global batch of ``batch_size`` rows is cut into ``size`` pieces, one per rank
  (`piece`), so the global batch, the learning-rate schedule and the number of steps stay
  those of one process (gradients of equal pieces, averaged, are the global batch's gradient);
* token stores are read by shard, each rank its own shards (`bertvision.spans.data.
  train_batches`); ranks may then hold different numbers of batches, and `zip_shortest` ends
  every rank's epoch when the first runs out (the rest of that epoch's batches are dropped, and
  counted);
* rank 0 scores validation and shares the scores (`share`), so every rank makes the same
  early-stopping decision; rank 0 alone writes files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from bertvision.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's rank among ``size`` ranks training one model (default: a single process)."""

    rank: int = 0
    size: int = 1

    def __post_init__(self):
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ConfigError(f"rank {self.rank} of {self.size} ranks: not a valid place")

    @classmethod
    def current(cls) -> World:
        """The place `torch.distributed`'s process group gives this process (a single process when
        no group is set up)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        """Rank 0: the rank that scores validation and writes files."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        """A global batch must cut into equal pieces, one per rank."""
        if batch_size % self.size:
            raise ConfigError(f"--batch-size {batch_size} does not split over {self.size} workers; "
                              f"give a multiple of {self.size}")  # fmt: skip

    def piece(self, rows):
        """This rank's piece of one global batch (a 1-D tensor or array of row indices): the
        ``rank``-th of ``size`` contiguous, near-equal pieces (all of it for one rank)."""
        if self.size == 1:
            return rows
        step = -(-len(rows) // self.size)
        return rows[self.rank * step : (self.rank + 1) * step]

    def wrap(self, model, device):
        """``model`` as it trains here: in `DistributedDataParallel` for several ranks (its
        parameters broadcast from rank 0), as is for one."""
        if self.size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if getattr(device, "type", "cpu") == "cuda" and device.index is not None else None
        return DistributedDataParallel(model, device_ids=ids)

    def share(self, value):
        """``value`` as rank 0 has it, on every rank (any picklable object; rank 0's is returned
        unchanged)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if self.size == 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def total(self, count: int) -> int:
        """The sum of ``count`` over the ranks, on every rank."""
        if self.size == 1:
            return count
        import torch
        import torch.distributed as dist

        t = torch.tensor([count], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return int(t.item())

    def zip_shortest(self, batches: Iterable, dropped: list | None = None) -> Iterator:
        """This rank's batches while every rank still has one: the epoch ends on every rank at
        once. The batches left on this rank then are counted into ``dropped`` (a one-item list)."""
        it = iter(batches)
        while True:
            batch = next(it, _END)
            if self.any(batch is _END):
                if dropped is not None and batch is not _END:
                    dropped[0] += 1 + sum(1 for _ in it)
                return
            yield batch


ONE = World()
"""A single process: every loop's default."""

_END = object()
