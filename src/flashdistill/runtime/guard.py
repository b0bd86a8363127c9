"""All-or-nothing training updates: a gradient is checked on every rank before any optimizer steps with it, and a
module's trainable state can be put back when a later update of the same iteration turns out non-finite.

- `backward_checked`: backward and clip, no step; reports whether loss and gradient norm are finite on all ranks.
- `optimizer_step`: the same, then the step when finite.
- `finish_backward` + `grad_sync`: the same check after gradient accumulation (`run.micro_batch`): the micro-batches'
  backward passes add up, ranks synchronise on the last one only, and the check and clipping run once per update.
- `Snapshot`: the trainable parameters and optimizer state of a module, taken before a run of updates and restored
  if one of them fails (the critic's several updates per DMD iteration; one copy of the critic's trainable
  parameters and AdamW moments, in host memory on a GPU).
Used by `distill/trainer.py`; tests: `pytest tests/test_distill.py -k bad_critic`.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from flashdistill.runtime.dist import Dist


def finish_backward(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: float, clip: float, dist: Dist
                    ) -> tuple[bool, float]:
    """After the backward passes of one update (one, or one per micro-batch): clip, and report whether the loss and
    the gradient norm are finite on every rank, (finite, norm). A non-finite update is left with no gradient."""
    norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf")))
    bad = not (math.isfinite(loss) and math.isfinite(norm))
    if dist.mean(float(bad)) > 0:
        opt.zero_grad(set_to_none=True)
        return False, norm
    return True, norm


def backward_checked(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float,
                     dist: Dist) -> tuple[bool, float]:
    """Backward and clip, no step: (finite on every rank, norm). A non-finite loss or norm leaves no gradient."""
    opt.zero_grad(set_to_none=True)
    loss.backward()  # under DDP this all-reduces, so every rank sees the same gradient norm
    return finish_backward(module, opt, float(loss), clip, dist)


def optimizer_step(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float,
                   dist: Dist) -> tuple[bool, float]:
    """Backward, clip, step; a non-finite loss or gradient norm (on any rank) skips the step: (stepped, norm)."""
    ok, norm = backward_checked(module, opt, loss, clip, dist)
    if ok:
        opt.step()
    return ok, norm


@contextmanager
def grad_sync(module: torch.nn.Module, enabled: bool):
    """Gradient accumulation: with `enabled` False, the backward passes inside keep their gradients local (DDP's
    `no_sync`; FSDP2's `set_requires_gradient_sync(False)` on the sharded module, an AdapterView's shared base
    included); the last micro-batch of an update runs with it True, so ranks communicate once per update."""
    target = getattr(module, "base", module)
    if enabled:
        if hasattr(target, "set_requires_gradient_sync"):
            target.set_requires_gradient_sync(True)
        yield
    elif hasattr(module, "no_sync"):  # DDP: the forward must run inside the context too
        with module.no_sync():
            yield
    elif hasattr(target, "set_requires_gradient_sync"):
        target.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            target.set_requires_gradient_sync(True)
    else:
        yield


class Snapshot:
    """A module's trainable parameters and its optimizer's state, to undo the updates of a skipped iteration.

    On a GPU the copy lives in pinned host memory, allocated once and refilled each iteration by asynchronous
    copies (ordered before the updates on the same stream), so it costs no GPU memory: with fp32 adapters it would
    otherwise add 12 bytes per critic parameter to the peak. On a CPU it is a plain copy."""

    def __init__(self):
        self.buffers: list[torch.Tensor] = []
        self.had_state: dict[int, bool] = {}

    @staticmethod
    def _tensors(module: torch.nn.Module, opt: torch.optim.Optimizer) -> list[torch.Tensor]:
        out = []
        for p in (p for p in module.parameters() if p.requires_grad):
            out.append(_local(p))
            out += [_local(v) for _, v in sorted(opt.state.get(p, {}).items()) if torch.is_tensor(v)]
        return out

    @torch.no_grad()
    def take(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> Snapshot:
        self.had_state = {id(p): bool(opt.state.get(p)) for p in module.parameters() if p.requires_grad}
        tensors = self._tensors(module, opt)
        if [t.shape for t in tensors] != [b.shape for b in self.buffers]:
            self.buffers = [_host_buffer(t) for t in tensors]
        for buf, t in zip(self.buffers, tensors):
            buf.copy_(t, non_blocking=t.is_cuda)
        return self

    @torch.no_grad()
    def restore(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        for p in (p for p in module.parameters() if p.requires_grad):
            if not self.had_state.get(id(p)):
                opt.state.pop(p, None)  # the first update created it: back to no state, as before
        for t, buf in zip(self._tensors(module, opt), self.buffers):
            t.copy_(buf)


def _host_buffer(t: torch.Tensor) -> torch.Tensor:
    """A host tensor shaped like `t`: pinned for a GPU tensor (asynchronous copies), pageable if pinning fails."""
    if t.is_cuda:
        try:
            return torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
        except RuntimeError:  # pinned memory refused (a sandboxed runtime): pageable copies are synchronous
            pass
    return torch.empty(t.shape, dtype=t.dtype, device="cpu")


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: the local shard of a DTensor (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t
