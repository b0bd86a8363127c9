"""What the parts of one DMD iteration return (distill/iteration.py): small dataclasses instead of tuples, and the
optional terms' losses (regression, pairs, GAN) passed up with them rather than through the context."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Terms:
    """The optional terms' losses of an iteration (regression, pairs, GAN), a list of values per name."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def merge(self, other: Terms) -> None:
        for name, values in other.values.items():
            self.values.setdefault(name, []).extend(values)

    def means(self) -> dict[str, float]:
        return {name: sum(values) / len(values) for name, values in self.values.items()}


@dataclass
class GeneratorStep:
    """The generator update up to its step (`apply_generator` takes it once the critic's updates are finite)."""

    x: torch.Tensor  # x_θ, detached: what the critic learns from
    loss: float  # this rank's loss, weighted over the micro-batches (and the paired regression's)
    grad_norm: float
    finite: bool
    teachers_ran: list[str]
    dmd_grad_norm: float  # the mean per-row norm of the DMD gradient
    terms: Terms
    peeked: dict[str, torch.Tensor]  # the first rows of x_θ, x0_real, x0_fake when `ctx.peek` asked for them


@dataclass
class GeneratorRows:
    """One micro-batch of the generator update."""

    x: torch.Tensor  # detached
    loss: torch.Tensor  # with its graph
    teachers_ran: list[str]
    dmd_norms: torch.Tensor  # (rows,)
    terms: Terms
    peeked: dict[str, torch.Tensor]


@dataclass
class CriticStep:
    """The critic's `critic.updates` updates: mean loss, last gradient norm, all finite, the first update's loss
    (the weights the iteration started from), the GAN classifier's terms."""

    loss: float
    grad_norm: float
    finite: bool
    first_loss: float
    terms: Terms

    @staticmethod
    def skipped() -> CriticStep:
        nan = float("nan")
        return CriticStep(nan, nan, False, nan, Terms())
