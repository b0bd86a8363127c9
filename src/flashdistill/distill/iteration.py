"""One DMD iteration (paper §2.2 and §4.3; DMD2 conventions), the engine's inner loop.

1. Batch `i` from the family's batch source (data/sources.py: the world, or the data files through the
   condition cache; T2I and edit rows at the recipe's ratio and composition); every random draw of
   the iteration (student step k, noises, DMD times) comes from `step_generator(seed, i)` for the global batch.
2. Generator: backward simulation to step k (`dmd.simulate`) gives x_θ; x_t = (1-t)·x_θ + t·ξ; x0_real from the
   λ_k-weighted teachers with CFG (eq. 5-7), x0_fake from the critic; loss 0.5·||x_θ - sg(x_θ - grad)||² with the
   normalised DMD gradient (eq. 4), plus the optional first-step flow matching (§6.1) and DMD's regression onto
   the teachers' ODE from the student's own input z_k (`dmd.regression`); AdamW, clipping, EMA.
3. Critic: `critic.updates` flow-matching updates (eq. 2) on the detached x_θ, each with fresh (t, noise).
Edit rows carry their source tokens through student, teachers and critic alike (`Cond.source`).

An iteration is all or nothing: the generator's step waits until its gradient and every critic update are known
finite; a non-finite loss or gradient norm anywhere skips the whole iteration (student, critic, both optimizers
and the EMA as they were before it; the critic is restored from a copy taken before its updates) and the metrics
say so (`skipped`); the training loop counts the streak (flashdistill.runtime.loop).

What a user debugging a collapse wants to see (DMD2's logs): `dmd_grad_norm`, the mean per-row norm of the DMD
gradient the student is pushed along, beside the losses; and on the iterations the loop logs (`Context.peek`), the
student's samples x_θ with the teachers' x0_real and the critic's x0_fake for the same noised rows, as images for
tensorboard (pixel-space models; a latent model's x0 are not images until decoded, so they are left out).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from flashdistill.conditioning import Cond
from flashdistill.data.sources import BatchSource
from flashdistill.distill import dmd, gan, pairs
from flashdistill.distill.families import Family
from flashdistill.distill.guidance import Guidance
from flashdistill.distill.layouts import fsdp
from flashdistill.distill.layouts.base import Roles
from flashdistill.distill.pairs import PairsCache
from flashdistill.distill.recipe import Recipe
from flashdistill.distill.results import CriticStep, GeneratorRows, GeneratorStep, Terms
from flashdistill.errors import UserError
from flashdistill.flow import interpolate
from flashdistill.runtime.dist import Dist
from flashdistill.runtime.guard import Snapshot, finish_backward, grad_sync
from flashdistill.runtime.steps import ema_update, micro_batches, step_generator
from flashdistill.sampling import concat_cond, guided_velocity

SCALARS = ("loss", "loss_critic", "grad_norm", "grad_norm_critic", "dmd_grad_norm", "loss_reg", "loss_pairs",
           "loss_gan", "loss_gan_critic", "gan_acc", "k", "skipped", "time_data", "time_student", "time_teachers",
           "time_critic", "step_time")
PEEK_ROWS = 4  # rows of x_θ / x0_real / x0_fake kept for the logs


@dataclass
class Draws:
    """Every random draw of one iteration: student step k, backward-simulation noises, DMD and critic times."""

    k: int
    noises: torch.Tensor  # (K, B, C, H, W): z at t=1, then the re-noising draws
    t: torch.Tensor  # (B,) DMD perturbation times
    xi: torch.Tensor  # (B, C, H, W) DMD perturbation noise
    critic_t: torch.Tensor  # (U, B)
    critic_eps: torch.Tensor  # (U, B, C, H, W)
    # The GAN's own draws (distill/gan.py), drawn after the others and only with the GAN on, so a run without it
    # draws exactly the numbers it always did: row 0 for the generator's term, rows 1..U for the critic updates.
    gan_t: torch.Tensor | None = None  # (1 + U, B)
    gan_eps: torch.Tensor | None = None  # (1 + U, B, C, H, W)

    def rows(self, sl: slice, device) -> Draws:
        gan = [None if d is None else d[:, sl].to(device) for d in (self.gan_t, self.gan_eps)]
        return Draws(self.k, self.noises[:, sl].to(device), self.t[sl].to(device), self.xi[sl].to(device),
                     self.critic_t[:, sl].to(device), self.critic_eps[:, sl].to(device), *gan)


def draw(gen: torch.Generator, recipe: Recipe, batch_size: int, shape: tuple[int, ...]) -> Draws:
    """All draws for the global batch, in a fixed order: any rank slices the same numbers."""
    times, nfe, u = recipe.dmd, len(recipe.timesteps), recipe.critic.updates
    k = int(torch.randint(nfe, (1,), generator=gen))
    noises = torch.randn((nfe, batch_size, *shape), generator=gen)
    t = dmd.sample_dmd_t(batch_size, gen, times.t_min, times.t_max, times.t_shift)
    xi = torch.randn((batch_size, *shape), generator=gen)
    critic_t = torch.stack([dmd.sample_dmd_t(batch_size, gen, times.t_min, times.t_max, times.t_shift)
                            for _ in range(u)])
    critic_eps = torch.randn((u, batch_size, *shape), generator=gen)
    if not recipe.gan.enabled():
        return Draws(k, noises, t, xi, critic_t, critic_eps)
    gan_t = torch.stack([gan.sample_t(batch_size, gen, recipe.gan) for _ in range(1 + u)])
    gan_eps = torch.randn((1 + u, batch_size, *shape), generator=gen)
    return Draws(k, noises, t, xi, critic_t, critic_eps, gan_t, gan_eps)


@dataclass
class Context:
    recipe: Recipe
    roles: Roles
    guidance: Guidance
    source: BatchSource  # flashdistill.data.sources: WorldSource | FileSource
    dist: Dist
    timers: dict[str, float]
    family: Family  # distill/families.py: the teachers' CFG rule, the batch source, the export
    snapshot: Snapshot = field(default_factory=Snapshot)  # the critic before its updates (reused buffers)
    peek: bool = False  # keep this iteration's first rows of x_θ, x0_real, x0_fake in `peeked` (for the logs)
    peeked: dict[str, torch.Tensor] = field(default_factory=dict)  # train_iteration's, from its GeneratorStep
    gan_snapshot: Snapshot = field(default_factory=Snapshot)  # the GAN head before the critic updates
    step: int = 0  # the iteration being run (0-based): the GAN's warm-up and the pairs' weight read it
    pairs: PairsCache | None = None  # the teachers' cached images the student regresses onto (distill/pairs.py)

    @contextmanager
    def timed(self, part: str):
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()
        self.timers[part] = self.timers.get(part, 0.0) + time.perf_counter() - start


def build_inputs(ctx: Context, step: int) -> tuple[torch.Tensor | None, Cond, Cond, Draws]:
    """This rank's rows of batch `step`: real images (for §6.1 only; None from data files), cond, uncond, draws."""
    size, dev = ctx.recipe.dmd.batch_size, ctx.dist.device
    batch = ctx.source.batch(step, size, ctx.dist.rows(size))
    draws = draw(step_generator(ctx.recipe.dmd.seed, step), ctx.recipe, size, ctx.source.shape)
    x = None if batch.x is None else batch.x.to(dev)
    return x, batch.cond.to(dev), batch.uncond.to(dev), draws.rows(ctx.dist.rows(size), dev)


def generator_update(ctx: Context, x_data: torch.Tensor, cond: Cond, uncond: Cond, draws: Draws) -> GeneratorStep:
    """Eq. 4/7 with backward simulation, up to the gradient. The rows run in micro-batches whose gradients add up to
    the whole batch's (each loss weighted by its share of the rows)."""
    r, recipe = ctx.roles, ctx.recipe
    r.opt_student.zero_grad(set_to_none=True)
    n = cond.batch_size
    parts = micro_batches(n, recipe.run.micro_batch)
    terms = Terms()
    xs, loss_sum, ran, dmd_norm, peeked = [], pairs_update(ctx, terms), [], 0.0, {}
    for j, sl in enumerate(parts):
        with grad_sync(r.student_train, j == len(parts) - 1):
            rows = generator_rows(ctx, None if x_data is None else x_data[sl], cond.rows(sl), uncond.rows(sl),
                                  draws.rows(sl, draws.t.device), j == 0)
            with ctx.timed("student"):
                (rows.loss * ((sl.stop - sl.start) / n)).backward()  # under DDP the last one all-reduces
        xs.append(rows.x)
        loss_sum += rows.loss.item() * (sl.stop - sl.start) / n
        dmd_norm += float(rows.dmd_norms.sum()) / n
        ran += [m for m in rows.teachers_ran if m not in ran]
        terms.merge(rows.terms)
        peeked = peeked or rows.peeked
    with ctx.timed("student"):
        ok, norm = finish_backward(r.student_train, r.opt_student, loss_sum, recipe.dmd.grad_clip, ctx.dist)
    return GeneratorStep(torch.cat(xs), loss_sum, norm, ok, ran, dmd_norm, terms, peeked)


def pairs_update(ctx: Context, terms: Terms) -> float:
    """The paired regression's backward (distill/pairs.py), before the DMD's micro-batches so that their last,
    synchronised backward carries its gradient to every rank; returns its weighted loss (0.0 when off)."""
    recipe, r, cache = ctx.recipe, ctx.roles, ctx.pairs
    weight = recipe.pairs.weight_at(ctx.step, recipe.dmd.iterations) if cache is not None else 0.0
    if weight <= 0:
        return 0.0
    size, dev = recipe.pairs.batch_size or recipe.dmd.batch_size, ctx.dist.device
    gen = step_generator(recipe.dmd.seed, ctx.step, stream=2)
    positions = torch.randint(len(cache), (size,), generator=gen)[ctx.dist.rows(size)].tolist()
    eps = torch.randn((size, *ctx.source.shape), generator=gen)[ctx.dist.rows(size)].to(dev)
    with ctx.timed("data"):
        indices, keys, target = cache.get(positions)
        cond = ctx.source.items(keys).cond.to(dev)
        z = pairs.pair_noise(cache.identity["seed"], indices, ctx.source.shape).to(dev)
    with ctx.timed("student"), grad_sync(r.student_train, False):
        x0 = pairs.student_x0(r.student_train, z, recipe.timesteps[0], cond, recipe.dmd.bf16)
        layers = gan.head_layers(r.critic.config.num_layers, recipe.gan)
        term = pairs.regression_distance(x0, target.to(dev), recipe.pairs.distance, r.critic, cond, layers, eps,
                                         recipe.dmd.bf16)
        (weight * term).backward()
    terms.add("loss_pairs", term.item())
    return weight * term.item()


def teacher_mix(ctx: Context, draws: Draws, cond: Cond, uncond: Cond) -> dmd.TeacherMix:
    """The λ_k-weighted guided teachers of these rows, the columns matched to the teachers by name."""
    recipe = ctx.recipe
    teachers = {name: ctx.roles.teachers[name] for name in ctx.guidance.teachers}
    any_rank = ctx.dist.any if fsdp.active(recipe.run.parallel, ctx.dist) else None  # same teacher calls on every rank
    return dmd.TeacherMix(teachers, ctx.guidance.weights(draws.k, cond.category), cond, uncond, recipe.dmd.cfg_scale,
                          recipe.dmd.bf16, ctx.family.cfg_rule, any_rank)


def generator_rows(ctx: Context, x_data: torch.Tensor | None, cond: Cond, uncond: Cond, draws: Draws,
                   first: bool) -> GeneratorRows:
    """One micro-batch of the generator update. The `first` micro-batch keeps its first rows of x_θ, x0_real and
    x0_fake when `ctx.peek` asks for them."""
    r, recipe, terms = ctx.roles, ctx.recipe, Terms()
    with ctx.timed("student"):
        x, v, z = dmd.simulate(r.student_train, draws.noises, recipe.timesteps, draws.k, cond, recipe.dmd.bf16,
                               r.student)
    x_t = interpolate(x.detach(), draws.xi, draws.t)
    with ctx.timed("teachers"):
        mix = teacher_mix(ctx, draws, cond, uncond)
        x0_real, ran = dmd.real_x0(mix, x_t, draws.t)
        if recipe.dmd.regression > 0:
            target = dmd.teacher_ode_x0(mix, z, recipe.timesteps[draws.k], recipe.dmd.regression_nfe,
                                        recipe.student.shift)
        if ctx.dist.any(bool(mix.nonfinite))[0]:
            check_teachers(ctx, ran, cond, uncond)
    with ctx.timed("critic"):
        x0_fake = dmd.fake_x0(r.critic, x_t, draws.t, cond, recipe.dmd.bf16)
    with ctx.timed("student"):
        grad = dmd.dmd_gradient(x, x0_real, x0_fake, recipe.dmd.normalize)
        loss = dmd.generator_loss(x, grad)
        if recipe.dmd.first_step_fm > 0 and draws.k == 0:  # same k on every rank: the graphs agree under DDP
            loss = loss + recipe.dmd.first_step_fm * dmd.first_step_fm_loss(v, draws.noises[0], x_data)
        if recipe.dmd.regression > 0:
            term = dmd.regression_loss(x, target)
            terms.add("loss_reg", term.item())
            loss = loss + recipe.dmd.regression * term
    weight = recipe.gan.weight_at(ctx.step)
    if r.gan_head is not None and weight > 0:
        with ctx.timed("critic"):  # D(x_θ_s) through the critic, with a graph back to the student
            fake = gan.logits(r.critic, r.gan_head, x, draws.gan_eps[0], draws.gan_t[0], cond, recipe.dmd.bf16)
            term = gan.generator_gan_loss(fake)
        terms.add("loss_gan", term.item())
        loss = loss + weight * term
    peeked = {name: value[:PEEK_ROWS].detach().float().cpu()
              for name, value in (("x", x), ("x0_real", x0_real), ("x0_fake", x0_fake))} if first and ctx.peek else {}
    return GeneratorRows(x.detach(), loss, ran, grad.float().flatten(1).norm(dim=1), terms, peeked)


@torch.no_grad()
def check_teachers(ctx: Context, names: list[str], cond: Cond, uncond: Cond) -> None:
    """A teacher's output held NaN or Inf (the DMD gradient's nan_to_num would hide it). On a diverged student's
    samples that is the student's fault, which the iteration guard handles; so each teacher that ran is run again on
    pure noise at t = 1 with the same conditions, and one whose output is still not finite stops the run, naming it
    (every rank makes the same calls)."""
    recipe = ctx.recipe
    z = torch.randn((cond.batch_size, *ctx.source.shape), generator=torch.Generator().manual_seed(0)).to(
        ctx.dist.device)
    t = torch.ones(cond.batch_size, device=ctx.dist.device)
    broken = []
    for name in names:
        with dmd.autocast(z.device, recipe.dmd.bf16):
            v = guided_velocity(ctx.roles.teachers[name], z, t, cond, uncond, recipe.dmd.cfg_scale, ctx.family.cfg_rule)
        broken.append(not bool(torch.isfinite(v).all()))
    flags = ctx.dist.any(*broken) if names else ()
    culprits = [name for name, flag in zip(names, flags) if flag]
    if culprits:
        raise UserError(f"teachers.{culprits[0]}: its output holds NaN or Inf even on pure noise; its weights are "
                        f"broken. Stopped before any update that used it")


def apply_generator(ctx: Context) -> None:
    """The generator's step (its gradient is in place) and the EMA after it."""
    r = ctx.roles
    with ctx.timed("student"):
        r.opt_student.step()
        ema_update(r.ema, r.student, ctx.recipe.dmd.ema_decay)


def critic_update(ctx: Context, x: torch.Tensor, cond: Cond, draws: Draws, x_data: torch.Tensor | None = None
                  ) -> CriticStep:
    """`critic.updates` flow-matching steps on the detached student samples, each over the batch's micro-batches.
    With the GAN term on, each update also trains the classifier on the real images `x_data` against the
    student's. A non-finite update stops them and puts the critic, the classifier and their optimizers back as
    before the first."""
    r, recipe, terms = ctx.roles, ctx.recipe, Terms()
    losses, norm = [], float("nan")
    before = ctx.snapshot.take(r.critic, r.opt_critic) if recipe.critic.updates > 1 else None
    head_before = ctx.gan_snapshot.take(r.gan_head, r.opt_gan) if before and r.gan_head is not None else None
    parts = micro_batches(cond.batch_size, recipe.run.micro_batch)
    with ctx.timed("critic"):
        for u in range(recipe.critic.updates):
            r.opt_critic.zero_grad(set_to_none=True)
            if r.opt_gan is not None:
                r.opt_gan.zero_grad(set_to_none=True)  # also drops what the generator's GAN term left there
            loss = 0.0
            for j, sl in enumerate(parts):
                with grad_sync(r.critic_train, j == len(parts) - 1):
                    part = critic_rows(ctx, x[sl], None if x_data is None else x_data[sl], draws, u, sl, cond, terms)
                    part = part * ((sl.stop - sl.start) / cond.batch_size)
                    part.backward()
                loss += part.item()
            ok, norm = finish_backward(r.critic_train, r.opt_critic, loss, recipe.dmd.grad_clip, ctx.dist)
            losses.append(loss)
            if ok:
                r.opt_critic.step()
                if r.opt_gan is not None:
                    r.opt_gan.step()
            else:
                if before is not None and u > 0:
                    before.restore(r.critic, r.opt_critic)
                if head_before is not None and u > 0:
                    head_before.restore(r.gan_head, r.opt_gan)
                return CriticStep(sum(losses) / len(losses), norm, False, losses[0], terms)
    return CriticStep(sum(losses) / len(losses), norm, True, losses[0], terms)


def critic_rows(ctx: Context, x: torch.Tensor, x_real: torch.Tensor | None, draws: Draws, u: int, sl: slice,
                cond: Cond, terms: Terms) -> torch.Tensor:
    """One micro-batch of critic update `u`: flow matching on the student's samples (eq. 2), plus with the GAN
    term the classifier's loss on real against fake rows, both noised to the GAN's own (s, eps) of this update,
    in one forward (distill/gan.py); the classifier's loss and accuracy go to `terms`."""
    r, recipe = ctx.roles, ctx.recipe
    eps, t, rows = draws.critic_eps[u, sl], draws.critic_t[u, sl], cond.rows(sl)
    loss = dmd.critic_loss(r.critic_train, x, eps, t, rows, recipe.dmd.bf16)
    if r.gan_head is None or recipe.gan.critic_weight == 0 or x_real is None:
        return loss
    s, eps_s = draws.gan_t[1 + u, sl], draws.gan_eps[1 + u, sl]
    both = gan.logits(r.critic_train, r.gan_head, torch.cat([x_real, x.detach()]), torch.cat([eps_s, eps_s]),
                      torch.cat([s, s]), concat_cond(rows, rows), recipe.dmd.bf16)
    real, fake = both.chunk(2)
    term = gan.classifier_loss(real, fake)
    terms.add("loss_gan_critic", term.item())
    terms.add("gan_acc", gan.accuracy(real, fake))
    return loss + recipe.gan.critic_weight * term


def train_iteration(ctx: Context, step: int) -> dict:
    """One generator update and its critic updates on batch `step`; returns the iteration's metrics."""
    start = time.perf_counter()
    ctx.timers.clear()
    ctx.step = step
    with ctx.timed("data"):
        x_data, cond, uncond, draws = build_inputs(ctx, step)
    gen = generator_update(ctx, x_data, cond, uncond, draws)
    ctx.peeked = gen.peeked
    critic = critic_update(ctx, gen.x, cond, draws, x_data) if gen.finite else CriticStep.skipped()
    if gen.finite and critic.finite:
        apply_generator(ctx)
    else:
        ctx.roles.opt_student.zero_grad(set_to_none=True)
    dist = ctx.dist
    loss_g = dist.mean(gen.loss)
    metrics = {"step": step + 1, "loss": loss_g, "loss_critic": dist.mean(critic.loss), "grad_norm": gen.grad_norm,
               "grad_norm_critic": critic.grad_norm, "dmd_grad_norm": gen.dmd_grad_norm, "k": draws.k,
               "skipped": int(not (gen.finite and critic.finite)), "teachers_run": gen.teachers_ran,
               # the weights this iteration started from gave finite losses (its updates may still have failed)
               "weights_ok": bool(math.isfinite(loss_g) and math.isfinite(dist.mean(critic.first_loss))),
               "lr": ctx.recipe.dmd.lr, "edit_rows": int(cond.has_source.sum())}
    gen.terms.merge(critic.terms)
    metrics.update(gen.terms.means())
    metrics.update({f"time_{part}": seconds for part, seconds in ctx.timers.items()})
    metrics["step_time"] = time.perf_counter() - start
    return metrics


def build_context(recipe: Recipe, roles: Roles, dist: Dist, out, encoder=None) -> Context:
    """The iteration's context: the family's batch source (its text cache in `out`), the guidance table."""
    family = roles.family
    source = family.source(recipe, out, encoder, roles.student.config)
    # before the first iteration: can a rank's batch stack its edit sources?
    source.check_rows(len(range(recipe.dmd.batch_size)[dist.rows(recipe.dmd.batch_size)]))
    ctx = Context(recipe, roles, recipe.weights, source, dist, {}, family)
    if recipe.pairs.enabled():
        ctx.pairs = open_pairs(recipe, family, source)
    return ctx


def open_pairs(recipe, family, source) -> PairsCache:
    """The recipe's pairs cache, checked against the run: family, target shape, the teachers' weight files (the
    pairs are images of the teachers this run distils), and every pair's item."""
    from flashdistill.distill.inputs import input_fingerprint

    folder = recipe.pairs.folder
    cache = PairsCache(folder)
    where = f"pairs.folder {folder}"
    if cache.identity.get("family") != family.name or tuple(cache.identity.get("shape", ())) != source.shape:
        raise UserError(f"{where}: built for {cache.identity.get('family')} targets of shape "
                        f"{cache.identity.get('shape')}, this run trains {family.name} at {list(source.shape)}")
    if len(cache) == 0:
        raise UserError(f"{where}: holds no pairs yet; build them with `{cache.command}`")
    inputs = input_fingerprint(recipe, family)["inputs"]
    built = cache.identity.get("teachers", {})
    for name in recipe.teachers:
        if name not in built or built[name].get("files") != inputs[f"teachers.{name}"].get("files"):
            raise UserError(f"{where}: built with other weights for teachers.{name} than this run's; build pairs "
                            f"of this recipe's teachers (`flashdistill pairs RECIPE --out ANOTHER_FOLDER`)")
    cache.check_items(source)
    return cache


