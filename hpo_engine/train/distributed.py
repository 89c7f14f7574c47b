"""Data parallelism over torch.distributed, as torchrun launches it.

Every rank holds the whole policy and its own engine on the same weights (colocated: no refit
copy). A step's windows are split in contiguous shares; a window's group of samples stays on one
rank, so the group z-scores of the reward need no communication. Each rank backpropagates its
own samples with the loss divided by the *global* token count, then one all-reduce (sum) of the
gradients per optimizer step gives every rank the gradient one process would have computed on
the whole batch, and every rank takes the same optimizer step. Parameters, optimizer state and
the data position therefore stay identical on all ranks: rank 0 alone writes checkpoints and logs.

Why not DDP or FSDP2's wrappers: both tie a gradient collective to every backward, so every rank
must run the same number of forwards. Here a rank runs as many token-packed micro-batches as its
share of a global batch needs (none at all when that share is empty), so the all-reduce is issued
once, after the rank's last micro-batch. The weights stay whole on every rank (its engine decodes
with them); the optimizer state can be sharded (`optim.shard_optimizer_state`: torch's
ZeroRedundancyOptimizer, train/run.py), which is where sharding saves memory here: AdamW's two fp32
moments are twice a fp32 model.

One process is a World of size 1 without a process group: every collective is then the identity,
and the one-process run and the distributed one are the same code.
"""
from __future__ import annotations

import datetime
import logging
import os
import pickle
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    sent: dict = field(default_factory=lambda: {"bytes": 0}, compare=False, repr=False)   # payload this rank
                                                                                          # put into collectives

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> range:
        """This rank's contiguous share of n items (sizes differ by at most one; may be empty)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def all_gather(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...] (picklable objects)."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        self.sent["bytes"] += len(pickle.dumps(obj))
        dist.all_gather_object(out, obj)
        return out

    def concat(self, items: list) -> list:
        """Every rank's list, concatenated in rank order (= the one-process order of contiguous shares)."""
        return [x for part in self.all_gather(list(items)) for x in part]

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Sum over ranks of a dict of numbers (float64, so a token count stays exact)."""
        if self.size == 1 or not values:
            return dict(values)
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        self.sent["bytes"] += t.numel() * t.element_size()
        dist.all_reduce(t)
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def broadcast(self, obj):
        """Rank 0's obj on every rank."""
        if self.size == 1:
            return obj
        box = [obj if self.is_main else None]      # used at resume only, outside the steps `sent` measures
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @torch.no_grad()
    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Sum every parameter's .grad over ranks, in one flat all-reduce per dtype; a parameter a rank
        computed no gradient for (it had no sample in this batch) contributes zeros."""
        if self.size == 1:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            self.sent["bytes"] += flat.numel() * flat.element_size()
            dist.all_reduce(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    @torch.no_grad()
    def broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Rank 0's values into every rank's parameters (the replicas start equal, as DDP makes them)."""
        if self.size == 1:
            return
        for p in params:
            dist.broadcast(p.data, src=0)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world(device: str = "cpu") -> World:
    """The World of this process: torchrun's RANK / WORLD_SIZE when set (gloo on CPU, NCCL on CUDA,
    each rank on cuda:LOCAL_RANK), else one process. Idempotent. Ranks other than 0 log errors only."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank = int(os.environ["RANK"])
    if not dist.is_initialized():
        cuda = str(device).startswith("cuda")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        timeout = datetime.timedelta(seconds=float(os.environ.get("HPO_DIST_TIMEOUT_S", "1800")))
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
        # after a restart by torchrun the agent's store may still hold the dead round's addresses:
        # the keys of each round go under its own prefix
        store = dist.PrefixStore(f"hpo_engine/round_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
        dist.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=size,
                                timeout=timeout)
    if rank != 0:       # one voice: rank 0's
        for name in ("hpo_engine", "hpo_engine.train"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return World(rank, size)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
