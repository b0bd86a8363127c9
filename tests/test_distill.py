"""DMD distillation engine: closed-form DMD gradient, recipe and λ validation, zero-weight teachers, task and category
sampling, exact resume, NaN handling, quick eval with best keeping, diffusers export, and a 2-rank torchrun run.
Tiny random teachers (MMDiTConfig.tiny), batch 4, 1 CPU thread, a few iterations each; the torchrun test is the
slow one (~30 s)."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flashdistill.cli.distill import main_distill
from flashdistill.conditioning import Cond
from flashdistill.data.batches import choose_items, make_batch
from flashdistill.distill import dmd
from flashdistill.distill.export import STUDENT_FILE, load_student
from flashdistill.distill.guidance import Guidance
from flashdistill.distill.iteration import build_context, train_iteration
from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.recipe import load_recipe, resume_fingerprint
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.flow import v_from_x0
from flashdistill.models.text import TextEncoder
from flashdistill.pipeline import StudentModel
from flashdistill.runfolder import MARKER
from flashdistill.runtime.dist import Dist
from flashdistill.teacher.train import TrainingDiverged

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "distill_tiny.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")


def overrides(teachers, cache_dir, *extra):
    return [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}",
            f"run.text_cache={cache_dir}", *extra]


def tiny(teachers, cache_dir, *extra):
    return load_recipe(TINY, overrides(teachers, cache_dir, *extra))


# ---- the DMD gradient on Gaussians (closed form) -----------------------------------------------------------
class GaussianDenoiser(torch.nn.Module):
    """Exact velocity for data N(μ, s²I) under z_t = (1-t)x + t·eps, μ = cond.text[:, 0, 0] (+ `offset`):
    E[x | z_t] = μ + c(t)·(z_t - (1-t)μ), c(t) = (1-t)s² / ((1-t)²s² + t²)."""

    def __init__(self, s: float, offset: float = 0.0):
        super().__init__()
        self.s, self.offset, self.calls = s, offset, []

    def x0(self, z_t, t, mu):
        t = t.reshape(-1, 1, 1, 1)
        c = (1 - t) * self.s ** 2 / ((1 - t) ** 2 * self.s ** 2 + t ** 2)
        return mu + c * (z_t - (1 - t) * mu)

    def forward(self, z_t, t, cond):
        self.calls.append(len(z_t))
        mu = (cond.text[:, 0, 0] + self.offset).reshape(-1, 1, 1, 1)
        return v_from_x0(z_t, t, self.x0(z_t, t, mu))


class ConstantStudent(torch.nn.Module):
    """x0 = θ at every step: v = (z_t - θ) / t."""

    def __init__(self, theta):
        super().__init__()
        self.theta = torch.nn.Parameter(theta.clone())

    def forward(self, z_t, t, cond):
        return (z_t - self.theta) / t.reshape(-1, 1, 1, 1)


def _conds(mu_c: float, mu_u: float, b: int):
    def cond(mu):
        text = torch.zeros(b, 2, 4)
        text[:, 0, 0] = mu
        return Cond(text, torch.ones(b, 2, dtype=torch.bool), category=["landscape"] * b)
    return cond(mu_c), cond(mu_u)


@pytest.mark.parametrize("k", [0, 2])
def test_gaussian_dmd_gradient_is_normalised_x0_difference(k):
    """Student/critic/teachers with known x0: the generator's gradient is (x0_fake - x0_real)/mean|x - x0_real|."""
    b, shape, w = 3, (3, 4, 4), 2.5
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn((b, *shape), generator=gen)
    student = ConstantStudent(theta)
    teachers = {"base": GaussianDenoiser(0.5), "specialized": GaussianDenoiser(0.8, offset=0.3)}
    critic = GaussianDenoiser(1.2, offset=-0.4)
    lam = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]])  # (B, M)
    cond, uncond = _conds(1.0, -1.0, b)
    timesteps = [1.0, 0.75, 0.5, 0.25]
    x, _, _ = dmd.simulate(student, torch.randn((4, b, *shape), generator=gen), timesteps, k, cond)
    torch.testing.assert_close(x, theta)  # backward simulation ends at the student's x0
    t, xi = torch.tensor([0.3, 0.6, 0.9]), torch.randn((b, *shape), generator=gen)
    x_t = (1 - t.reshape(-1, 1, 1, 1)) * x.detach() + t.reshape(-1, 1, 1, 1) * xi
    x0_real, ran = dmd.real_x0(dmd.TeacherMix(teachers, lam, cond, uncond, w), x_t, t)
    x0_fake = dmd.fake_x0(critic, x_t, t, cond)
    loss = dmd.generator_loss(x, dmd.dmd_gradient(x, x0_real, x0_fake), reduction="sum")
    loss.backward()

    # The same quantities from the closed form, independently of the engine.
    def guided(m: GaussianDenoiser):
        xc, xu = m.x0(x_t, t, 1.0 + m.offset), m.x0(x_t, t, -1.0 + m.offset)
        return xu + w * (xc - xu)  # CFG on v is CFG on x0 at fixed (x_t, t)
    want_real = sum(lam[:, i].reshape(-1, 1, 1, 1) * guided(m) for i, m in enumerate(teachers.values()))
    want_fake = critic.x0(x_t, t, 1.0 - 0.4)
    scale = (theta - want_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(x0_real, want_real, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0_fake, want_fake, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(student.theta.grad, (want_fake - want_real) / scale, rtol=1e-5, atol=1e-5)
    assert ran == ["base", "specialized"] and teachers["base"].calls == [2 * 3]  # CFG: one doubled batch
    assert teachers["specialized"].calls == [2 * 2]  # only the 2 rows with λ > 0

    student.theta.grad = None
    x, _, _ = dmd.simulate(student, torch.randn((4, b, *shape), generator=gen), timesteps, k, cond)
    dmd.generator_loss(x, dmd.dmd_gradient(x, x0_real, x0_fake)).backward()  # "mean": DMD2's reduction
    torch.testing.assert_close(student.theta.grad * theta.numel(), (want_fake - want_real) / scale, rtol=1e-5,
                               atol=1e-5)


def test_gaussian_dmd_descent_moves_student_to_teacher():
    """Student x = θ + σ·eps with an exact critic for N(θ, σ²): DMD descent drives θ to the teacher's mean."""
    sigma, mu_real = 0.5, 1.5
    theta = torch.zeros(1, requires_grad=True)
    teacher, opt = GaussianDenoiser(sigma), torch.optim.SGD([theta], lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        x = theta + sigma * torch.randn((8, 1, 2, 2), generator=gen)
        t = 0.02 + 0.96 * torch.rand(8, generator=gen)
        x_t = (1 - t.reshape(-1, 1, 1, 1)) * x.detach() + t.reshape(-1, 1, 1, 1) * torch.randn(x.shape, generator=gen)
        x0_real = teacher.x0(x_t, t, mu_real)
        x0_fake = teacher.x0(x_t, t, theta.detach())  # the critic knows the student's distribution exactly
        opt.zero_grad()
        dmd.generator_loss(x, dmd.dmd_gradient(x, x0_real, x0_fake), reduction="sum").backward()
        opt.step()
    assert abs(theta.item() - mu_real) < 0.01  # the fixed point: x0_fake = x0_real exactly when θ = μ


@pytest.mark.parametrize("t0", [1.0, 0.5])
def test_gaussian_teacher_ode_lands_on_the_linear_map(t0):
    """For data N(μ, s²) the flow ODE keeps (z_t - (1-t)μ)/sd(t) fixed, sd(t)² = (1-t)²s² + t²: from z at t0 it
    lands on μ + s·(z - (1-t0)μ)/sd(t0). One Euler step from t0 lands on the mixed x0_real itself."""
    b, s, mu = 3, 0.5, 1.0
    z = torch.randn((b, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    teachers = {"base": GaussianDenoiser(s), "specialized": GaussianDenoiser(0.8, offset=0.3)}
    cond, uncond = _conds(mu, -1.0, b)
    only_base = torch.tensor([[1.0, 0.0]] * b)
    x0 = dmd.teacher_ode_x0(dmd.TeacherMix(teachers, only_base, cond, uncond, 1.0), z, t0, 400, 1.0)
    sd = ((1 - t0) ** 2 * s ** 2 + t0 ** 2) ** 0.5
    torch.testing.assert_close(x0, mu + s * (z - (1 - t0) * mu) / sd, rtol=0, atol=1e-2)  # Euler: O(1/nfe)
    lam = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5]])
    mix = dmd.TeacherMix(teachers, lam, cond, uncond, 2.5)
    one = dmd.teacher_ode_x0(mix, z, t0, 1, 1.0)
    want, _ = dmd.real_x0(mix, z, torch.full((b,), t0))
    torch.testing.assert_close(one, want)


def test_regression_term_trains_and_is_logged(teachers, cache_dir, encoder, tmp_path):
    sets = ("dmd.iterations=2", "dmd.regression=0.5", "dmd.regression_nfe=2")
    train_distill(tiny(teachers, cache_dir, *sets), tmp_path / "reg", encoder=encoder)
    log = [json.loads(line) for line in (tmp_path / "reg" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_reg"]) and r["loss_reg"] > 0 for r in log)
    train_distill(tiny(teachers, cache_dir, *sets[:1]), tmp_path / "plain", encoder=encoder)
    a, b = _weights(tmp_path / "reg"), _weights(tmp_path / "plain")
    assert any(not torch.equal(a["student"][k], b["student"][k]) for k in a["student"])  # the term moved it
    with pytest.raises(UserError, match=r"dmd\.regression_nfe"):
        tiny(teachers, cache_dir, "dmd.regression_nfe=0")
    # checkpoints written before the term existed still resume: at its defaults it is not in the fingerprint
    assert "regression" not in resume_fingerprint(tiny(teachers, cache_dir))["dmd"]
    assert resume_fingerprint(tiny(teachers, cache_dir, *sets[1:]))["dmd"]["regression"] == 0.5


# ---- recipe and λ validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["guidance.text=[{base: 0.5}, {base: 1}, {base: 1}, {base: 1}]"], r"guidance\.text\[0\]: weights sum to 0\.5"),
    (["guidance.portrait={base: 1.5, specialized: -0.5}"], r"guidance\.portrait\.base: weight must be in \[0, 1\]"),
    (["guidance.portrait={base: 0.5, expert: 0.5}"], r"guidance\.portrait: unknown teacher 'expert'"),
    (["guidance.sky={base: 1}"], r"guidance\.sky: unknown category"),
    (["guidance.text=[{base: 1}, {base: 1}]"], r"guidance\.text: has 2 rows, the student has 4 steps"),
    (["guidance.style_transfer.base=one"], r"guidance\.style_transfer\.base: weight must be a number"),
    (["dmd.lrr=1"], r"dmd\.lrr: unknown key"),
    (["dmd.batch_size=2.5"], r"dmd\.batch_size: must be an integer"),
    (["dmd.batch_size=10000000"], r"dmd\.batch_size: must be in \[1, 4096\]"),  # refused before allocating
    (["run.threads=1000000000"], r"run\.threads: must be in \[0, 1024\]"),  # OpenMP would ask for 216 GB
    (["run.compile=full"], r"run\.compile: must be one of none, blocks, got 'full'"),
    (["data.composition={landscape: 1e308, portrait: 1e308}"], r"data: the weights .* add up to more than"),
    (["dmd.ema_decay=1"], r"dmd\.ema_decay: must be in"),
    (["tasks.ratio=7-3"], r"tasks\.ratio: must look like 5:5"),
    (["data.counts={text: 10}"], r"data: give data\.composition .* or data\.counts"),
    (["data.composition={sky: 1}"], r"data\.composition\.sky: unknown category"),
    (["tasks.edit_mix={teleport: 1}"], r"tasks\.edit_mix\.teleport: unknown category"),
    (["student.init_from=expert"], r"student\.init_from: unknown teacher 'expert'"),
    (["student.timesteps=[1.0, 0.5, 0.6, 0.2]"], r"student\.timesteps: must decrease"),
    (["bogus=1"], r"bogus: unknown key"),
])
def test_recipe_errors_name_the_key_or_row(teachers, cache_dir, extra, message):
    with pytest.raises(UserError, match=message):
        tiny(teachers, cache_dir, *extra)


def test_recipe_overrides_and_shipped_recipes(teachers, cache_dir):
    recipe = tiny(teachers, cache_dir, "tasks.ratio=7:3", "dmd.lr=2e-4", "data.counts={landscape: 100}",
                  "data.composition=null")
    assert recipe.tasks.weights() == (7.0, 3.0) and recipe.dmd.lr == 2e-4
    assert recipe.timesteps == [1.0, 0.75, 0.5, 0.25]
    assert recipe.task_mix().t2i_pool == {"landscape": 100}
    assert recipe.guidance["text"][1] == {"base": 0.5, "specialized": 0.5}
    assert recipe.guidance["portrait"] == [{"base": 1.0}] * 4  # filled from guidance.default
    shipped = [ROOT / "configs" / "flash.yaml", *sorted((ROOT / "configs" / "studies").glob("*.yaml"))]
    assert len(shipped) > 1
    for path in shipped:
        load_recipe(path)  # validation needs no teacher on disk
    flash = load_recipe(ROOT / "configs" / "flash.yaml")
    assert flash.tasks.weights() == (5.0, 5.0) and set(flash.teachers) == {"base", "specialized"}


def test_main_distill_bad_input_is_one_line_exit_2(teachers, cache_dir, tmp_path, capsys):
    code = main_distill([str(TINY), "--out", str(tmp_path / "run"), "--set",
                         *overrides(teachers, cache_dir, "guidance.text={base: 0.9}")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and err.startswith("error: guidance.text: weights sum to 0.9")
    code = main_distill([str(TINY), "--out", str(tmp_path / "run2"), "--set", "teachers.base=/nonexistent"])
    assert code == 2 and "teachers.base:" in capsys.readouterr().err


# ---- guidance: a zero-weight teacher is never called -------------------------------------------------------
class Spy(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    @property
    def config(self):
        return self.model.config

    def forward(self, z_t, t, cond):
        self.rows.append(sorted(set(cond.category)))
        return self.model(z_t, t, cond)


def test_zero_weight_teacher_is_never_called(teachers, cache_dir, encoder, tmp_path):
    # specialized only for text at k >= 1; the batches hold landscape and text rows, no edits.
    recipe = tiny(teachers, cache_dir, "tasks.ratio=1:0", "data.composition={landscape: 1, text: 1}")
    ctx = build_context(recipe, build_roles(recipe, Dist()), Dist(), tmp_path, encoder)
    ctx.roles.teachers = {name: Spy(m) for name, m in ctx.roles.teachers.items()}
    ks = []
    for step in range(8):
        metrics = train_iteration(ctx, step)
        ks.append(metrics["k"])
        spec_calls = ctx.roles.teachers["specialized"].rows
        if metrics["k"] == 0:
            assert "specialized" not in metrics["teachers_run"]
        assert all(cats == ["text"] for cats in spec_calls)  # never on a landscape row
    assert 0 in ks and any(k > 0 for k in ks)  # both cases were exercised
    assert ctx.roles.teachers["specialized"].rows  # and the expert did run where its weight is > 0
    guidance = Guidance(recipe.guidance, list(recipe.teachers))
    assert guidance.active(0) == ["base"] and guidance.active(1) == ["base", "specialized"]


# ---- the task ratio and category composition are drawn as configured ---------------------------------------
def test_task_ratio_and_composition_are_drawn_as_configured(teachers, cache_dir):
    recipe = tiny(teachers, cache_dir, "tasks.ratio=7:3", "data.composition={landscape: 3, text: 1}",
                  "tasks.edit_mix={text_editing: 1, style_transfer: 3}")
    mix = recipe.task_mix()
    rows = [r for step in range(500) for r in choose_items(step, 8, mix, seed=0)]  # 4000 rows
    tasks = Counter(task for task, _, _ in rows)
    t2i = Counter(cat for task, cat, _ in rows if task == "t2i")
    edit = Counter(cat for task, cat, _ in rows if task == "edit")
    assert abs(tasks["edit"] / len(rows) - 0.3) < 0.025  # binomial sd 0.007
    assert set(t2i) == {"landscape", "text"} and abs(t2i["landscape"] / sum(t2i.values()) - 0.75) < 0.03
    assert set(edit) == {"text_editing", "style_transfer"}
    assert abs(edit["style_transfer"] / sum(edit.values()) - 0.75) < 0.04
    # Counts (the paper's E1-E5 are given as numbers of prompts): shares ∝ counts, prompts from the first N.
    mix = tiny(teachers, cache_dir, "tasks.ratio=1:0", "data.composition=null",
               "data.counts={landscape: 50, portrait: 150}").task_mix()
    rows = [r for step in range(250) for r in choose_items(step, 8, mix, seed=0)]
    cats = Counter(cat for _, cat, _ in rows)
    assert abs(cats["portrait"] / len(rows) - 0.75) < 0.03 and "text" not in cats
    assert max(i for _, c, i in rows if c == "landscape") < 50 and max(i for _, c, i in rows if c == "portrait") < 150
    assert len({i for _, c, i in rows if c == "landscape"}) > 40  # the whole small pool is used
    batch = make_batch(3, 8, mix, seed=0)
    assert [(t, c, i) for t, c, i in zip(batch.task, batch.category, batch.index)] == choose_items(3, 8, mix, 0)


# ---- exact resume ------------------------------------------------------------------------------------------
def _weights(run: Path) -> dict:
    return {n: load_file(str(run / "checkpoint" / f"{n}.safetensors")) for n in ("student", "ema", "critic")}


def test_resume_is_exact(teachers, cache_dir, encoder, tmp_path):
    recipe = tiny(teachers, cache_dir, "dmd.iterations=4", "run.checkpoint_every=2")
    straight = train_distill(recipe, tmp_path / "straight", encoder=encoder)
    assert straight["iterations"] == 4 and straight["student"]
    part = train_distill(recipe, tmp_path / "split", encoder=encoder, stop_after=2)
    assert part["iterations"] == 2 and part["student"] is None
    with pytest.raises(UserError, match="pass --resume"):
        train_distill(recipe, tmp_path / "split", encoder=encoder)
    with pytest.raises(UserError, match=r"differs from the checkpoint's in dmd\.cfg_scale"):
        train_distill(tiny(teachers, cache_dir, "dmd.cfg_scale=3"), tmp_path / "split", resume=True, encoder=encoder)
    resumed = train_distill(recipe, tmp_path / "split", resume=True, encoder=encoder)
    assert resumed["resumed_from"] == 2 and resumed["iterations"] == 4
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for role in a:
        for key in a[role]:
            torch.testing.assert_close(a[role][key], b[role][key], atol=1e-6, rtol=0, msg=f"{role}:{key}")
    la = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], rel=1e-5)
    assert all(r["time_student"] > 0 and r["time_teachers"] > 0 and r["time_critic"] > 0 for r in la)


# ---- DMD2's debugging logs -------------------------------------------------------------------------------
def test_dmd_gradient_norm_and_x0_images_are_logged(teachers, cache_dir, encoder, tmp_path):
    """The logged DMD-gradient norm is the mean per-row norm of eq. 4's normalised gradient, recomputed here from the
    peeked x_θ, x0_real and x0_fake (every row is peeked at batch 4); a run writes those three as tensorboard images."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny(teachers, cache_dir, "dmd.iterations=2", "dmd.batch_size=4", "run.log_every=1")
    ctx = build_context(recipe, build_roles(recipe, Dist()), Dist(), tmp_path / "ctx", encoder)
    ctx.peek = True
    metrics = train_iteration(ctx, 0)
    x, real, fake = (ctx.peeked[k] for k in ("x", "x0_real", "x0_fake"))
    scale = (x - real).abs().mean(dim=(1, 2, 3), keepdim=True)
    expected = ((fake - real) / scale).flatten(1).norm(dim=1).mean()
    assert metrics["dmd_grad_norm"] == pytest.approx(float(expected), rel=1e-4) and float(expected) > 0
    train_distill(recipe, tmp_path / "run", encoder=encoder)
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    assert {"dmd/x_student", "dmd/x0_real", "dmd/x0_fake"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Images("dmd/x0_real")] == [1, 2]
    assert "train/dmd_grad_norm" in events.Tags()["scalars"]


# ---- DMD2's GAN term ---------------------------------------------------------------------------------------
def test_gan_losses_in_closed_form():
    from flashdistill.distill import gan

    zero = torch.zeros(4)
    assert float(gan.classifier_loss(zero, zero)) == pytest.approx(2 * np.log(2))  # an undecided classifier
    assert float(gan.generator_gan_loss(zero)) == pytest.approx(np.log(2))
    sure = torch.full((4,), 30.0)
    assert float(gan.classifier_loss(sure, -sure)) < 1e-9  # real called real, fake called fake: no loss
    assert float(gan.generator_gan_loss(-sure)) == pytest.approx(30.0, rel=1e-6)  # fooled nobody: the loss is big


def test_gan_term_trains_checkpoints_and_resumes_exactly(teachers, cache_dir, encoder, tmp_path):
    sets = ("dmd.iterations=3", "run.checkpoint_every=1", "gan.generator_weight=0.01", "gan.critic_weight=0.1")
    recipe = tiny(teachers, cache_dir, *sets)
    straight = train_distill(recipe, tmp_path / "straight", encoder=encoder)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss_gan"]) and np.isfinite(r["loss_gan_critic"]) for r in log)
    assert straight["skipped_total"] == 0
    head = load_file(str(tmp_path / "straight" / "checkpoint" / "gan_head.safetensors"))
    train_distill(recipe, tmp_path / "split", encoder=encoder, stop_after=2)
    train_distill(recipe, tmp_path / "split", resume=True, encoder=encoder)
    again = load_file(str(tmp_path / "split" / "checkpoint" / "gan_head.safetensors"))
    for key in head:
        torch.testing.assert_close(head[key], again[key], atol=1e-6, rtol=0, msg=key)
    plain = train_distill(tiny(teachers, cache_dir, *sets[:2]), tmp_path / "plain", encoder=encoder)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "plain")
    assert plain["iterations"] == 3
    assert any(not torch.equal(a["student"][k], b["student"][k]) for k in a["student"])  # the GAN term moved it


@pytest.mark.parametrize("sets, key", [(["gan.generator_weight=0.01"], "gan.critic_weight"),
                                       (["gan.critic_weight=0.1", "gan.layers=[99]"], "gan.layers")])
def test_gan_settings_are_checked(teachers, cache_dir, encoder, tmp_path, sets, key):
    with pytest.raises(UserError, match=re.escape(key)):
        recipe = tiny(teachers, cache_dir, *sets)
        build_roles(recipe, Dist())


# ---- NaN handling ------------------------------------------------------------------------------------------
def test_nan_steps_are_skipped_counted_and_stop_the_run(teachers, cache_dir, encoder, tmp_path, monkeypatch):
    real_loss, calls = dmd.generator_loss, []

    def nan_on_second(x, grad, reduction="mean"):
        calls.append(1)
        loss = real_loss(x, grad, reduction)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(dmd, "generator_loss", nan_on_second)
    summary = train_distill(tiny(teachers, cache_dir), tmp_path / "once", encoder=encoder)
    assert summary["iterations"] == 4 and summary["skipped_total"] == 1
    log = [json.loads(line) for line in (tmp_path / "once" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in log] == [0, 1, 0, 0] and log[-1]["skipped_total"] == 1

    monkeypatch.setattr(dmd, "generator_loss", lambda x, grad, reduction="mean": real_loss(x, grad) * float("inf"))
    recipe = tiny(teachers, cache_dir, "dmd.iterations=10", "dmd.max_bad_steps=3")
    with pytest.raises(TrainingDiverged, match=r"3 iterations in a row were skipped .* iteration 3.*from iteration 0"):
        train_distill(recipe, tmp_path / "always", encoder=encoder)
    assert not (tmp_path / "always" / "checkpoint").exists()  # no checkpoint of weights no good iteration ran from


def _roles_state(run: Path, name: str = "checkpoint") -> dict:
    return {n: load_file(str(run / name / f"{n}.safetensors")) for n in ("student", "ema", "critic")}


def test_a_bad_critic_update_undoes_the_whole_iteration(teachers, cache_dir, encoder, tmp_path, monkeypatch):
    """Defect: the generator step and EMA were applied before a later critic update came out non-finite."""
    recipe = tiny(teachers, cache_dir, "dmd.iterations=1", "critic.updates=3")
    ctx = build_context(recipe, build_roles(recipe, Dist()), Dist(), tmp_path, encoder)
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in ctx.roles.modules().items()}
    opt_before = [len(ctx.roles.opt_student.state), len(ctx.roles.opt_critic.state)]
    real, calls = dmd.critic_loss, []

    def nan_on_third(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(dmd, "critic_loss", nan_on_third)
    metrics = train_iteration(ctx, 0)
    assert metrics["skipped"] == 1 and len(calls) == 3
    for name, module in ctx.roles.modules().items():  # student, EMA and critic all as before the iteration
        for key, value in module.state_dict().items():
            assert torch.equal(value, before[name][key]), f"{name}:{key} moved"
    assert [len(ctx.roles.opt_student.state), len(ctx.roles.opt_critic.state)] == opt_before == [0, 0]


def test_diverged_run_keeps_good_weights_and_resumes_with_a_lower_lr(teachers, cache_dir, encoder, tmp_path,
                                                                     capsys):
    """Defect: with dmd.lr=critic.lr=1e30 the checkpoint held weights near 1e30, and --resume with a sane lr was
    refused because the recipe differed."""
    out = tmp_path / "run"
    good = train_distill(tiny(teachers, cache_dir, "dmd.iterations=6"), out, encoder=encoder, stop_after=2)
    assert good["iterations"] == 2
    saved = _roles_state(out)
    huge = tiny(teachers, cache_dir, "dmd.iterations=6", "dmd.lr=1e30", "critic.lr=1e30", "run.checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match=r"continues from the checkpoint at iteration 2"):
        train_distill(huge, out, resume=True, encoder=encoder)
    assert "dmd.lr 0.001 -> 1e+30, critic.lr 0.001 -> 1e+30" in capsys.readouterr().err
    after = _roles_state(out)
    for role in saved:  # the checkpoint --resume will use holds the good weights, untouched
        for key in saved[role]:
            assert torch.equal(after[role][key], saved[role][key]), f"{role}:{key}"
    lower = tiny(teachers, cache_dir, "dmd.iterations=4", "dmd.lr=1e-4", "critic.lr=1e-4")
    summary = train_distill(lower, out, resume=True, encoder=encoder)
    assert summary["resumed_from"] == 2 and summary["iterations"] == 4 and summary["skipped_total"] == 0
    final = _roles_state(out)
    assert all(torch.isfinite(t).all() and t.abs().max() < 1e3 for r in final.values() for t in r.values())
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    for name in ("optimizer", "critic_optimizer"):  # the optimizers run at the new lr, not the checkpoint's
        groups = dict(state[name]["__dict__"])["param_groups"]
        assert {dict(g["__dict__"])["lr"] for g in groups} == {1e-4}


def test_diverging_from_fresh_weights_sets_aside_the_ruined_checkpoint(teachers, cache_dir, encoder, tmp_path):
    """One finite-looking step with a huge lr ruins the student; the checkpoint written after it is set aside."""
    recipe = tiny(teachers, cache_dir, "dmd.iterations=8", "dmd.lr=1e30", "critic.updates=1", "critic.lr=1e-30",
                  "run.checkpoint_every=1")
    with pytest.raises(TrainingDiverged, match="starts again from iteration 0"):
        train_distill(recipe, tmp_path / "run", encoder=encoder)
    assert not (tmp_path / "run" / "checkpoint").exists() and (tmp_path / "run" / "checkpoint.diverged").is_dir()
    ruined = load_file(str(tmp_path / "run" / "checkpoint.diverged" / "student.safetensors"))
    assert max(float(t.abs().max()) for t in ruined.values()) > 1e20


def test_resume_removes_folders_a_kill_during_export_left(teachers, cache_dir, encoder, tmp_path):
    """Defect: `.student-tmp-*` folders of an export killed midway were never removed."""
    out = tmp_path / "run"
    recipe = tiny(teachers, cache_dir, "dmd.iterations=2")
    train_distill(recipe, out, encoder=encoder)  # finished; then an export killed midway leaves its folders
    for stale in (".student-tmp-0badc0de", ".best-tmp-12345678", ".student-old-87654321"):
        (out / stale).mkdir()
        (out / stale / "student.json").write_text("{")
    summary = train_distill(recipe, out, resume=True, encoder=encoder)
    left = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != MARKER]  # the run's own marker stays
    assert summary["student"] and not left
    assert summary["final_loss"] is not None  # no iteration ran in this call: the checkpoint's last loss
    assert load_student(out).info["iteration"] == 2


# ---- quick evaluation and the best checkpoint --------------------------------------------------------------
def test_quick_eval_keeps_the_best_and_patience_stops(teachers, cache_dir, encoder, tmp_path):
    scores = iter([1.0, 3.0, 2.0, 2.5, 9.0])
    seen = []

    def scorer(ema, iteration, dist):  # flashdistill.distill.trainer.Scorer
        seen.append((iteration, ema is not None and dist.main))
        return {"score": next(scores)}

    recipe = tiny(teachers, cache_dir, "dmd.iterations=6", "eval.every=1", "eval.patience=2")
    summary = train_distill(recipe, tmp_path / "run", encoder=encoder, scorer=scorer)
    assert [i for i, _ in seen] == [1, 2, 3, 4] and all(ok for _, ok in seen)
    assert summary["stopped_early"] and summary["iterations"] == 4
    assert summary["best_score"] == 3.0 and summary["best_iteration"] == 2
    best = json.loads((tmp_path / "run" / "best" / STUDENT_FILE).read_text())
    assert best["iteration"] == 2 and best["weights"] == "best"
    evals = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if '"kind": "eval"' in line]
    assert [e["score"] for e in evals] == [1.0, 3.0, 2.0, 2.5] and [e["is_best"] for e in evals] == [1, 1, 0, 0]
    assert load_student(tmp_path / "run").info["weights"] == "best"  # best is preferred over the final EMA


# ---- export and reload -------------------------------------------------------------------------------------
def test_export_reloads_through_diffusers_and_serves_the_benches(teachers, cache_dir, encoder, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel

    from flashdistill.bench.cases import BUILTIN_CASES, load_cases

    run = tmp_path / "run"
    train_distill(tiny(teachers, cache_dir, "dmd.iterations=2"), run, encoder=encoder)
    export = run / "student"
    transformer = QwenImageTransformer2DModel.from_pretrained(export, subfolder="transformer")
    ema = load_file(str(run / "checkpoint" / "ema.safetensors"))
    for key, value in transformer.state_dict().items():
        assert torch.equal(value, ema[f"transformer.{key}"]), key
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(export, subfolder="scheduler")
    assert scheduler.config.stochastic_sampling and scheduler.config["_student_sigmas"] == [1.0, 0.75, 0.5, 0.25]
    scheduler.set_timesteps(sigmas=scheduler.config["_student_sigmas"])
    assert scheduler.sigmas[:-1].tolist() == [1.0, 0.75, 0.5, 0.25]

    student = load_student(run)
    assert student.timesteps == [1.0, 0.75, 0.5, 0.25] and student.info["weights"] == "ema"
    model = StudentModel(student, encoder=encoder)
    t2i = load_cases(BUILTIN_CASES["t2i"], "t2i", limit=1)
    edits = load_cases(BUILTIN_CASES["edit"], "edit", limit=1)[:2]
    images = model.t2i(t2i, 4)
    sources = [img * 0 + 0.5 for img in model.t2i(t2i[:2], 4)]
    edited = model.edit(edits, sources, None)
    assert len(images) == 3 and len(edited) == 2
    assert all(img.shape == (32, 32, 3) and 0 <= img.min() and img.max() <= 1 for img in images + edited)
    np.testing.assert_allclose(model.t2i(t2i[:1], 4)[0], images[0], atol=1e-5)  # depends on its seed, not its batch
    # A killed run (checkpoint only, no export) still serves its EMA student.
    partial = tmp_path / "partial"
    train_distill(tiny(teachers, cache_dir, "dmd.iterations=3"), partial, encoder=encoder, stop_after=2)
    assert load_student(partial).info["iteration"] == 2
    with pytest.raises(UserError, match="no distilled student"):
        load_student(tmp_path)


# ---- data parallel -----------------------------------------------------------------------------------------
def test_two_ranks_match_one(teachers, cache_dir, tmp_path):
    """SLOW (~30-60 s): torchrun with 2 gloo ranks at global batch 4 follows the 1-rank trajectory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    args = [str(TINY), "--set", *overrides(teachers, cache_dir, "dmd.iterations=3", "run.checkpoint_every=3")]
    one = subprocess.run([sys.executable, "-m", "flashdistill", "distill", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "flashdistill", "distill", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    logs = {}
    for name in ("one", "two"):
        logs[name] = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
    assert [r["k"] for r in logs["one"]] == [r["k"] for r in logs["two"]]
    for key in ("loss", "loss_critic", "grad_norm", "grad_norm_critic"):
        assert [r[key] for r in logs["one"]] == pytest.approx([r[key] for r in logs["two"]], rel=1e-4, abs=1e-7), key
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for role in a:
        for key in a[role]:
            torch.testing.assert_close(a[role][key], b[role][key], atol=1e-5, rtol=1e-4, msg=f"{role}:{key}")


def test_a_teacher_whose_output_is_not_finite_stops_the_run_naming_it(teachers, cache_dir, encoder, tmp_path):
    """A teacher that loads but outputs NaN (here: one NaN weight) must not train "successfully": the DMD
    gradient's nan_to_num would turn its NaN into 0. The run stops before any update, naming the teacher."""
    from flashdistill.models.mmdit import FlowModel

    bad = FlowModel.from_pretrained(teachers / "spec", torch_dtype=torch.float32)
    with torch.no_grad():
        bad.transformer.proj_out.weight[0, 0] = float("nan")
    bad.save_pretrained(tmp_path / "nan-teacher")
    recipe = load_recipe(TINY, [f"teachers.base={teachers / 'base'}",
                                f"teachers.specialized={tmp_path / 'nan-teacher'}",
                                f"run.text_cache={cache_dir}", "dmd.iterations=6", "guidance.default={base: 0.5, "
                                "specialized: 0.5}"])
    with pytest.raises(UserError, match=r"^teachers\.specialized: its output holds NaN or Inf even on pure noise"):
        train_distill(recipe, tmp_path / "run", encoder=encoder)
    assert not (tmp_path / "run" / "checkpoint").exists()
