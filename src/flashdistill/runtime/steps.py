"""Per-step randomness, the EMA and the micro-batch slices, shared by teacher training, distillation and evaluation.

`step_generator(seed, step)` gives every random draw of one step from its own seeded stream, so nothing but the
checkpoint carries state from one step to the next and a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch


def step_generator(seed: int, step: int, stream: int = 1) -> torch.Generator:
    """The torch.Generator for every random draw of step `step`: independent of make_batch's stream. Another
    `stream` gives an independent generator for the same step (e.g. the pairs a distillation step regresses on)."""
    state = np.random.SeedSequence([int(seed), int(step), int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1-decay)·model, parameter by parameter."""
    for p_ema, p in zip(ema.parameters(), model.parameters()):
        p_ema.lerp_(p.detach(), 1 - decay)


def micro_batches(rows: int, micro: int) -> list[slice]:
    """This rank's `rows` in passes of at most `micro` rows (`run.micro_batch`; 0 = one pass)."""
    size = micro or rows
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]
