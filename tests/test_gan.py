"""DMD2's GAN term (distill/gan.py): per-token logits of the critic's blocks, its own noise levels, the warm-up, the
accuracy that shows a classifier leaving chance, and draws that leave a run without the GAN as it was."""

import json

import numpy as np
import pytest
import torch

from flashdistill.conditioning import Cond
from flashdistill.distill import gan
from flashdistill.distill.iteration import draw
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.text import TextEncoder
from test_distill import TINY, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_losses_and_accuracy_in_closed_form():
    zero = torch.zeros(2, 6)
    assert float(gan.classifier_loss(zero, zero)) == pytest.approx(2 * np.log(2))  # undecided: chance
    sure = torch.full((2, 6), 30.0)
    assert float(gan.classifier_loss(sure, -sure)) < 1e-9
    assert float(gan.generator_gan_loss(-sure)) == pytest.approx(30.0, rel=1e-6)
    assert gan.accuracy(sure, -sure) == 1.0 and gan.accuracy(-sure, sure) == 0.0
    half = torch.tensor([[1.0, -1.0]])
    assert gan.accuracy(half, half) == 0.5  # one real token right, one fake token right: chance


def test_head_gives_one_logit_per_token_per_block():
    config = MMDiTConfig(resolution=8, num_layers=4, num_attention_heads=2, attention_head_dim=32)
    critic = FlowModel(config)
    section = gan.GanSection(critic_weight=1.0)
    assert gan.head_layers(4, section) == (2, 3, 4)  # 50 / 75 / 100% of the depth
    assert gan.head_layers(2, section) == (1, 2)
    head = gan.build_head(critic, section, seed=0)
    x, eps = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    cond = Cond(torch.randn(3, 5, 384), torch.ones(3, 5, dtype=torch.bool))
    out = gan.logits(critic, head, x, eps, torch.full((3,), 0.2), cond, False)
    assert out.shape == (3, 3 * 16)  # 3 blocks x 16 tokens (8 px, 2x2 patches)
    # a token's logit answers for its own patch: changing one pixel moves the logits of the tokens it reaches,
    # and the per-token head makes the first block's logit of that patch move most
    x2 = x.clone()
    x2[0, :, 0:2, 0:2] += 3.0
    moved = (gan.logits(critic, head, x2, eps, torch.full((3,), 0.2), cond, False) - out)[0].abs()
    assert moved[:16].argmax() == 0


def test_warmup_and_own_noise_levels():
    section = gan.GanSection(generator_weight=0.1, critic_weight=1.0, warmup=5, t_min=0.02, t_max=0.3)
    assert [section.weight_at(i) for i in (0, 4, 5, 100)] == [0.0, 0.0, 0.1, 0.1]
    s = gan.sample_t(1000, torch.Generator().manual_seed(0), section)
    assert 0.02 <= float(s.min()) and float(s.max()) <= 0.3


def test_a_run_without_the_gan_draws_what_it_always_drew(teachers, tmp_path):
    base = load_recipe(TINY, [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}"])
    on = load_recipe(TINY, [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}",
                            "gan.critic_weight=0.1", "gan.generator_weight=0.01"])
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a, b = draw(gen(), base, 4, (3, 8, 8)), draw(gen(), on, 4, (3, 8, 8))
    assert a.gan_t is None and b.gan_t.shape == (1 + on.critic.updates, 4)
    for name in ("noises", "t", "xi", "critic_t", "critic_eps"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.k == b.k


def test_classifier_leaves_chance_on_grain():
    """The head on a small critic tells flat images from the same images with a fine grain, at small noise."""
    torch.manual_seed(0)
    config = MMDiTConfig(resolution=8, num_layers=2, num_attention_heads=2, attention_head_dim=32)
    critic = FlowModel(config)
    section = gan.GanSection(critic_weight=1.0, t_min=0.02, t_max=0.2)
    head = gan.build_head(critic, section, seed=0)
    opt = torch.optim.AdamW([*critic.parameters(), *head.parameters()], lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    cond = Cond(torch.zeros(32, 1, 384), torch.ones(32, 1, dtype=torch.bool))
    accs = []
    for _ in range(40):
        real = (torch.rand(16, 3, 1, 1, generator=gen) * 2 - 1).expand(16, 3, 8, 8)  # flat colours
        fake = real + 0.3 * torch.randn(16, 3, 8, 8, generator=gen)  # the same colours, grainy
        s = gan.sample_t(32, gen, section)
        eps = torch.randn(32, 3, 8, 8, generator=gen)
        both = gan.logits(critic, head, torch.cat([real, fake]), eps, s, cond, False)
        r, f = both.chunk(2)
        opt.zero_grad()
        gan.classifier_loss(r, f).backward()
        opt.step()
        accs.append(gan.accuracy(r, f))
    assert np.mean(accs[:3]) < 0.6 and np.mean(accs[-5:]) > 0.8, accs  # from chance to telling them apart


def test_gan_run_logs_accuracy_and_waits_for_its_warmup(teachers, tmp_path_factory, tmp_path):
    cache = tmp_path_factory.mktemp("gan-cache")
    sets = ("dmd.iterations=3", "gan.generator_weight=0.01", "gan.critic_weight=0.1", "gan.warmup=2")
    train_distill(tiny(teachers, cache, *sets), tmp_path / "run", encoder=TextEncoder())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(0 <= r["gan_acc"] <= 1 for r in log)
    assert ["loss_gan" in r for r in log] == [False, False, True]  # the student is steered after the warm-up
