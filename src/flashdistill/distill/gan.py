"""DMD2's GAN term: a classifier on the critic's features tells real images from the student's, both noised.

DMD alone matches the student's distribution to the teachers' through their scores, and a few-step (above all a
one-step) student tends to lose detail and modes on the way. DMD2 (Yin et al. 2024, §4.3) adds a GAN whose
discriminator is a small head on the fake-score network's (our critic's) intermediate features, trained on *real*
images, so the student is also pulled towards the data rather than only towards the teacher's approximation of it:

- critic update: loss_fm + `gan.critic_weight` · [softplus(D(x_fake_t)) + softplus(-D(x_real_t))], the classifier's
  logistic loss on the detached student samples and on data images, both noised to the critic update's (t, eps);
- generator update: loss_dmd + `gan.generator_weight` · softplus(-D(x_θ_t)), the non-saturating GAN loss, its
  gradient flowing through the critic into the student (the critic's own gradients from it are discarded: the
  critic update starts from zero gradients).

D reads the critic's hidden states after block `gan.layer` (default: the middle block), mean over tokens, then a
two-layer MLP to one logit. The real images come from the embedded world's batches (`x` of the batch source), so
the term needs the world, not data files (which hold prompts and edit sources only). Off by default (weights 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flashdistill.conditioning import Cond
from flashdistill.flow import interpolate
from flashdistill.runtime.config import require


@dataclass
class GanSection:
    generator_weight: float = 0.0  # λ of the student's non-saturating GAN loss (DMD2: 3e-3)
    critic_weight: float = 0.0  # λ of the classifier's loss in each critic update (DMD2: 1e-2)
    layer: int = 0  # critic block whose hidden states the classifier reads; 0 = the middle block
    lr: float = 1.0e-4  # the classifier head's AdamW learning rate

    def enabled(self) -> bool:
        return self.generator_weight > 0 or self.critic_weight > 0

    def check(self) -> None:
        require(self.generator_weight >= 0, "gan.generator_weight", "must be >= 0 (0 = off)")
        require(self.critic_weight >= 0, "gan.critic_weight", "must be >= 0 (0 = off)")
        require(self.layer >= 0, "gan.layer", "must be >= 0 (0 = the middle block)")
        require(self.lr > 0, "gan.lr", "must be > 0")
        require(self.generator_weight == 0 or self.critic_weight > 0, "gan.critic_weight",
                "must be > 0 when gan.generator_weight is: an untrained classifier gives the student no signal")


class GanHead(nn.Module):
    """Hidden states (B, N, D) -> one logit per row: mean over tokens, Linear, SiLU, Linear."""

    def __init__(self, dim: int, layer: int):
        super().__init__()
        self.layer = layer
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.mlp(hidden.float().mean(dim=1)).squeeze(1)  # (B,)


def build_head(critic, gan: GanSection, seed: int) -> GanHead:
    """The classifier head for `critic` (an MMDiT: its width and block count), seeded for reproducible runs."""
    config = critic.config
    layer = gan.layer or max(1, config.num_layers // 2)
    require(layer <= config.num_layers, "gan.layer", f"must be at most the critic's {config.num_layers} blocks")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GanHead(config.num_attention_heads * config.attention_head_dim, layer)


def logits(critic, head: GanHead, x: Tensor, eps: Tensor, t: Tensor, cond: Cond, bf16: bool) -> Tensor:
    """D(x_t): the classifier's logits for `x` noised to `t` with `eps` (gradients flow to x when it has them)."""
    x_t = interpolate(x, eps, t)
    with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, hidden = critic(x_t, t, cond, hidden_layer=head.layer)
    return head(hidden)


def classifier_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The discriminator's logistic loss: softplus(-D(real)) + softplus(D(fake)), each a mean over rows."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """The student's non-saturating loss: softplus(-D(x_θ)) = -log sigmoid(D(x_θ)), a mean over rows."""
    return F.softplus(-fake_logits).mean()
