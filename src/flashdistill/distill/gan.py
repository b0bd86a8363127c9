"""DMD2's GAN term: a classifier on the critic's features tells real images from the student's, token by token.

DMD alone matches the student's distribution to the teachers' through their scores, and a one-step student keeps
a fine grain on the way: at the DMD's perturbation times a grain is buried under noise, so neither score sees it.
DMD2 (Yin et al. 2024, §4.3) adds a GAN whose discriminator is a head on the fake-score network's (our critic's)
features, trained on *real* images, so the student is pulled towards the data, detail included:

- critic update: loss_fm + `gan.critic_weight` · [softplus(D(x_fake_s)) + softplus(-D(x_real_s))], the classifier's
  logistic loss on the detached student samples and on the world's exact renders, both noised to the GAN's own
  time s (`gan.t_min`..`gan.t_max`, biased to small s where detail is visible; its own noise draws);
- generator update: loss_dmd + w(i) · softplus(-D(x_θ_s)), the non-saturating GAN loss, its gradient flowing
  through the critic into the student (the critic's own gradients from it are discarded: the critic update starts
  from zero gradients). w(i) is 0 for the first `gan.warmup` iterations, so the classifier learns before it steers,
  then `gan.generator_weight`.

D reads the critic's hidden states of the target tokens after each block in `gan.layers` (default: 50%, 75% and
100% of the depth, as FastGen reads its discriminator features) and gives one logit per token per block: a patch
that is grainy is called fake where it is, instead of being averaged away in one pooled logit. Both losses are
means over rows, tokens and blocks. `accuracy` (real tokens called real and fake tokens called fake, half each) is
logged as `gan_acc`, so a classifier stuck at chance (0.5) is visible.

The real images come from the embedded world's batches (`x` of the batch source), so the term needs the world,
not data files (which hold prompts and edit sources only). Off by default (weights 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flashdistill.conditioning import Cond
from flashdistill.flow import interpolate, shift_time
from flashdistill.runtime.config import require

DEPTHS = (0.5, 0.75, 1.0)  # default blocks read, as fractions of the critic's depth


@dataclass
class GanSection:
    generator_weight: float = 0.0  # λ of the student's non-saturating GAN loss (DMD2: 3e-3)
    critic_weight: float = 0.0  # λ of the classifier's loss in each critic update (DMD2: 1e-2)
    layers: list[int] | None = None  # critic blocks (1-based) the classifier reads; None = 50/75/100% depth
    lr: float = 1.0e-4  # the classifier head's AdamW learning rate
    t_min: float = 0.02  # the GAN's noise levels s = shift(U[t_min, t_max], t_shift): small s, detail visible
    t_max: float = 0.5
    t_shift: float = 1.0
    warmup: int = 0  # iterations in which the classifier learns and the student gets no GAN term

    def enabled(self) -> bool:
        return self.generator_weight > 0 or self.critic_weight > 0

    def weight_at(self, step: int) -> float:
        """The generator term's weight at iteration `step` (0-based): 0 during the warm-up."""
        return 0.0 if step < self.warmup else self.generator_weight

    def check(self) -> None:
        require(self.generator_weight >= 0, "gan.generator_weight", "must be >= 0 (0 = off)")
        require(self.critic_weight >= 0, "gan.critic_weight", "must be >= 0 (0 = off)")
        require(self.layers is None or (len(self.layers) > 0 and all(int(j) >= 1 for j in self.layers)),
                "gan.layers", "must be a non-empty list of block numbers >= 1 (or null for 50/75/100% depth)")
        require(self.lr > 0, "gan.lr", "must be > 0")
        require(0 <= self.t_min < self.t_max <= 1, "gan.t_min, gan.t_max", "need 0 <= t_min < t_max <= 1")
        require(self.t_shift > 0, "gan.t_shift", "must be > 0")
        require(self.warmup >= 0, "gan.warmup", "must be >= 0")
        require(self.generator_weight == 0 or self.critic_weight > 0, "gan.critic_weight",
                "must be > 0 when gan.generator_weight is: an untrained classifier gives the student no signal")


def sample_t(n: int, gen: torch.Generator, gan: GanSection) -> Tensor:
    """The GAN's noise levels (n,), its own distribution (see the module docstring)."""
    return shift_time(gan.t_min + (gan.t_max - gan.t_min) * torch.rand(n, generator=gen), gan.t_shift)


class GanHead(nn.Module):
    """Hidden states (B, L, N, D) of L blocks -> logits (B, L·N): one per token per block, a small MLP per block."""

    def __init__(self, dim: int, layers: tuple[int, ...]):
        super().__init__()
        self.layers = tuple(layers)
        self.mlps = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
                                  for _ in self.layers)

    def forward(self, hidden: Tensor) -> Tensor:
        per_block = [mlp(hidden[:, j].float()).squeeze(-1) for j, mlp in enumerate(self.mlps)]  # L x (B, N)
        return torch.cat(per_block, dim=1)  # (B, L·N)


def head_layers(num_layers: int, gan: GanSection) -> tuple[int, ...]:
    """The critic blocks the head reads: `gan.layers`, or 50/75/100% of `num_layers` (deduplicated)."""
    if gan.layers is not None:
        layers = tuple(int(j) for j in gan.layers)
        require(max(layers) <= num_layers, "gan.layers", f"must be at most the critic's {num_layers} blocks")
        return layers
    return tuple(dict.fromkeys(max(1, round(d * num_layers)) for d in DEPTHS))


def build_head(critic, gan: GanSection, seed: int) -> GanHead:
    """The classifier head for `critic` (an MMDiT: its width and block count), seeded for reproducible runs."""
    config = critic.config
    layers = head_layers(config.num_layers, gan)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GanHead(config.num_attention_heads * config.attention_head_dim, layers)


def logits(critic, head: GanHead, x: Tensor, eps: Tensor, t: Tensor, cond: Cond, bf16: bool) -> Tensor:
    """D(x_s): the classifier's logits (B, L·N) for `x` noised to `t` with `eps` (gradients flow to x when it has
    them)."""
    x_t = interpolate(x, eps, t)
    with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, hidden = critic(x_t, t, cond, hidden_layer=head.layers)  # (B, L, N, D)
    return head(hidden)


def classifier_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's logistic loss: softplus(-D(real)) + softplus(D(fake)), each a mean over rows and tokens."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """The student's non-saturating loss: softplus(-D(x_θ)) = -log sigmoid(D(x_θ)), a mean over rows and tokens."""
    return F.softplus(-fake_logits).mean()


@torch.no_grad()
def accuracy(real_logits: Tensor, fake_logits: Tensor) -> float:
    """Share of real tokens called real and of fake tokens called fake, averaged: 0.5 is chance, 1 perfect."""
    return 0.5 * float((real_logits > 0).float().mean() + (fake_logits < 0).float().mean())
