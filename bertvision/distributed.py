"""Data-parallel training across processes, in plain `torch.distributed` (no Ray here). A `World`
is this process's rank among ``size``; the loops (`train.fit_head`, `finetune`) take one (default:
a single process, which changes nothing). Several ranks: DDP, each its `piece` of every global
batch (so steps and schedule stay one process's), token stores read by shard and epochs ended
together (`zip_shortest`); rank 0 validates and `share`s the scores, and alone writes files.
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
        return flag if self.size == 1 else bool(self._reduce(1 if flag else 0, "MAX"))

    def total(self, count: int) -> int:
        """The sum of ``count`` over the ranks, on every rank."""
        return count if self.size == 1 else self._reduce(count, "SUM")

    @staticmethod
    def _reduce(value: int, op: str) -> int:
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.int64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
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
