"""The ranks of a run under torchrun: `Dist` (this rank, the world size, the device, and the few collectives the
training loops use), `setup_distributed` (torchrun's environment read, the process group made: NCCL for CUDA tensors
and gloo for host ones on a GPU, gloo on a CPU) and `teardown_distributed` / `destroy_distributed` (the group ended).
One rank, no torchrun: `Dist()`.
Used by distillation (tests: `pytest tests/test_distill.py -k two_ranks`); nothing here knows models or DMD."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from flashdistill.errors import UserError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    group: bool = False  # a process group exists (always with world > 1; with one rank only when asked for)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of a global batch."""
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, value: float) -> float:
        """The mean of a number over ranks (a no-op with one rank)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        torch_dist.all_reduce(t)
        return float(t) / self.world

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Whether each flag is set on some rank (one collective for all of them)."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return tuple(bool(x) for x in t.tolist())

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def setup_distributed(device: str, batch_size: int, one_rank_group: bool = False) -> Dist:
    """Read torchrun's environment; create the process group when there is more than one rank, or under torchrun
    with one rank when `one_rank_group` (run.parallel fsdp: `torchrun --nproc_per_node=1` shards over one rank, so
    one GPU runs the FSDP2 path, its CPU offload included)."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError("run.device: cuda was asked for but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if batch_size % world:
        raise UserError(f"dmd.batch_size: {batch_size} does not split evenly over {world} ranks")
    torchrun = "MASTER_ADDR" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ
    if (world > 1 or (one_rank_group and torchrun)) and not torch_dist.is_initialized():
        # on CUDA, gloo too for host tensors: run.fsdp_offload keeps shards and gradients in host memory, and the
        # gradient norm of those host shards is reduced over the group (NCCL reduces device tensors only)
        torch_dist.init_process_group("cuda:nccl,cpu:gloo" if want_cuda else "gloo")
    return Dist(rank, world, dev, torch_dist.is_initialized())


def destroy_distributed() -> None:
    """Destroy the process group, if this process made one."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def teardown_distributed(code: int) -> int:
    """End a process that may have made a process group, with exit code `code`.

    One rank (world 1, no group): returns `code` for the caller to return. Under torchrun: destroys the process
    group and ends the process at once with `code` (`os._exit`), skipping interpreter finalization. With gloo on a
    loaded CPU about one rank exit in ten aborted *after* its work was done and written ("terminate called without
    an active exception", SIGABRT; faulthandler: main thread, no Python frame, i.e. C++ teardown of torch/gloo
    objects during finalization, the class of pytorch/pytorch#179291 and #190489), which torchrun reports as a
    failed run. Callers close their files and loggers first; stdout and stderr are flushed here."""
    destroy_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
