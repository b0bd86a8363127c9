"""All-or-nothing training updates: a gradient is checked on every rank before any optimizer steps with it, and a
module's trainable state can be put back when a later update of the same iteration turns out non-finite.

- `backward_checked`: backward and clip, no step; reports whether loss and gradient norm are finite on all ranks.
- `optimizer_step`: the same, then the step when finite.
- `Snapshot`: the trainable parameters and optimizer state of a module, taken before a run of updates and restored
  if one of them fails (the critic's several updates per DMD iteration; it costs one copy of the critic's trainable
  parameters and AdamW moments while an iteration runs).
Used by `distill/trainer.py`; tests: `pytest tests/test_distill.py -k bad_critic`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from flashdistill.distill.roles import Dist


def backward_checked(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float,
                     dist: Dist) -> tuple[bool, float]:
    """Backward and clip, no step: (finite on every rank, norm). A non-finite loss or norm leaves no gradient."""
    opt.zero_grad(set_to_none=True)
    loss.backward()  # under DDP this all-reduces, so every rank sees the same gradient norm
    norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), clip if clip > 0 else float("inf")))
    bad = not (torch.isfinite(loss).item() and torch.isfinite(torch.tensor(norm)).item())
    if dist.mean(float(bad)) > 0:
        opt.zero_grad(set_to_none=True)
        return False, norm
    return True, norm


def optimizer_step(module: torch.nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float,
                   dist: Dist) -> tuple[bool, float]:
    """Backward, clip, step; a non-finite loss or gradient norm (on any rank) skips the step: (stepped, norm)."""
    ok, norm = backward_checked(module, opt, loss, clip, dist)
    if ok:
        opt.step()
    return ok, norm


@dataclass
class Snapshot:
    """A module's trainable parameters and its optimizer's state, to undo updates of a skipped iteration."""

    params: list[torch.Tensor]
    optimizer: dict

    @classmethod
    def take(cls, module: torch.nn.Module, opt: torch.optim.Optimizer) -> Snapshot:
        params = [p.detach().clone() for p in module.parameters() if p.requires_grad]
        return cls(params, copy.deepcopy(opt.state_dict()))

    @torch.no_grad()
    def restore(self, module: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        for p, saved in zip([p for p in module.parameters() if p.requires_grad], self.params):
            p.copy_(saved)
        opt.load_state_dict(self.optimizer)
