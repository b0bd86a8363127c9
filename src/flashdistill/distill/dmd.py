"""The DMD losses, each a small function over the model interface `v = model(z_t, t, cond)` (paper §2.2, §4.3).

- `simulate`: backward simulation: run the student's first k steps without grad, take step k with grad -> x_θ.
- `real_x0`: the real score as x0, Σ_m λ_{k,m}(c)·x0_m with classifier-free guidance (eq. 5-6). Scores are affine
  in x0 at fixed (x_t, t): s(x_t) = -(x_t - (1-t)·x0)/t², so mixing scores and mixing x0 with weights that sum to 1
  agree. A teacher runs only on the rows where its weight is non-zero, and not at all if there are none.
- `fake_x0`: the critic's (fake score's) x0, unguided.
- `dmd_gradient`: s_fake - s_real = (1-t)/t²·(x0_fake - x0_real), so the eq. 4/7 direction is x0_fake - x0_real;
  DMD drops the positive factor and normalises per sample by mean|x_θ - x0_real|.
- `generator_loss`: 0.5·||x_θ - sg(x_θ - grad)||², whose gradient w.r.t. x_θ is `grad` (reduction "sum"), or
  grad / numel (reduction "mean", DMD2's choice; the learning rate absorbs the constant).
- `critic_loss`: flow matching (eq. 2) on detached student samples: the critic learns the student's score.
- `first_step_fm_loss`: optional first-step supervision (paper §6.1): at k = 0 the student's velocity from pure
  noise is regressed onto eps - x for the batch's real image x (so its x0 is pulled towards E[x | c]).
- `teacher_ode_x0` / `regression_loss`: DMD's regression term (Yin et al. 2024, §3.3): x_θ regressed onto where the
  guided teacher mix's ODE takes the student's own input z_k (at step k's time) to t = 0. Unlike §6.1's target, a
  sharp image paired with that very noise, so the student is pulled towards the teachers' noise-to-image map, modes
  and all, not towards a mean.

Closed-form checks: `pytest tests/test_distill.py -k gaussian`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flashdistill.conditioning import Cond
from flashdistill.flow import euler_timesteps, flow_matching_loss, interpolate, shift_time, v_from_x0, x0_from_v
from flashdistill.sampling import guided_velocity


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def sample_dmd_t(n: int, gen: torch.Generator, t_min: float, t_max: float, shift: float) -> Tensor:
    """DMD perturbation times (n,): uniform in [t_min, t_max] (DMD2), then the resolution shift."""
    return shift_time(t_min + (t_max - t_min) * torch.rand(n, generator=gen), shift)


def simulate(student, noises: Tensor, timesteps: list[float], k: int, cond: Cond, bf16: bool = False,
             no_grad_model=None) -> tuple[Tensor, Tensor, Tensor]:
    """Backward simulation: (x_θ, v, z) at student step k. `noises` (K, B, C, H, W): noises[0] is z at t=1,
    noises[j] re-noises to timesteps[j]. Steps < k run without grad on `no_grad_model` (default `student`)."""
    sim = student if no_grad_model is None else no_grad_model
    z = noises[0]
    with torch.no_grad(), autocast(z.device, bf16):
        for j in range(k):
            t = torch.full((len(z),), timesteps[j], device=z.device)
            x0 = x0_from_v(z, t, sim(z, t, cond).float())
            z = interpolate(x0, noises[j + 1], timesteps[j + 1])
    t = torch.full((len(z),), timesteps[k], device=z.device)
    with autocast(z.device, bf16):
        v = student(z, t, cond).float()
    return x0_from_v(z, t, v), v, z


@dataclass
class TeacherMix:
    """The guided teachers of one batch (eq. 5): the models by name with their λ per row, the conditions, and how
    the guided velocity is formed. `cfg_rule`: the family's guidance formula (sampling.guided_velocity; None = the
    standard one). `any_rank` (sharded teachers, roles.Dist.any): a teacher some other rank needs runs here too, on
    one row whose output is dropped, so every rank makes the same calls. `nonfinite` collects the names of the
    teachers whose output held NaN or Inf (the DMD gradient's nan_to_num would hide it)."""

    teachers: dict[str, torch.nn.Module]
    weights: Tensor  # (B, M): λ_m(c_b), columns in the order of `teachers`
    cond: Cond
    uncond: Cond
    cfg_scale: float
    bf16: bool = False
    cfg_rule: Callable | None = None
    any_rank: Callable | None = None
    nonfinite: list[str] = field(default_factory=list)


@torch.no_grad()
def real_x0(mix: TeacherMix, x_t: Tensor, t: Tensor) -> tuple[Tensor, list[str]]:
    """Σ_m λ_m(c)·x0_m(x_t, t, c) with CFG (eq. 5) for the teachers of `mix`. Returns the mix (B, C, H, W) and the
    names of the teachers that ran; those whose output held NaN or Inf are appended to `mix.nonfinite`."""
    out = torch.zeros_like(x_t)
    ran = []
    for m, (name, teacher) in enumerate(mix.teachers.items()):
        w = mix.weights[:, m].to(x_t.device)  # (B,)
        rows = (w > 0).nonzero().squeeze(1)
        needed = rows.numel() > 0 if mix.any_rank is None else mix.any_rank(rows.numel() > 0)[0]
        if not needed:
            continue  # a zero-weight teacher is never evaluated
        stand_in = rows.numel() == 0
        rows = rows if not stand_in else torch.zeros(1, dtype=torch.long, device=x_t.device)
        ran.append(name)
        with autocast(x_t.device, mix.bf16):
            v = guided_velocity(teacher, x_t[rows], t[rows], mix.cond.select(rows), mix.uncond.select(rows),
                                mix.cfg_scale, mix.cfg_rule)
        if stand_in:
            continue
        if not bool(torch.isfinite(v).all()):
            mix.nonfinite.append(name)
        x0 = x0_from_v(x_t[rows], t[rows], v.float())  # (R, C, H, W)
        out[rows] += w[rows, None, None, None] * x0
    return out, ran


@torch.no_grad()
def fake_x0(critic, x_t: Tensor, t: Tensor, cond: Cond, bf16: bool = False) -> Tensor:
    """The critic's x0 (the fake score, eq. 4's s_stu), conditional and unguided."""
    with autocast(x_t.device, bf16):
        v = critic(x_t, t, cond).float()
    return x0_from_v(x_t, t, v)


def dmd_gradient(x: Tensor, x0_real: Tensor, x0_fake: Tensor, normalize: bool = True) -> Tensor:
    """Eq. 4/7 in x0 form: (x0_fake - x0_real), divided per sample by mean|x - x0_real| (DMD) when `normalize`."""
    grad = x0_fake - x0_real
    if normalize:
        scale = (x - x0_real).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True)  # (B, 1, 1, 1)
        grad = grad / scale
    return torch.nan_to_num(grad.detach())


def generator_loss(x: Tensor, grad: Tensor, reduction: str = "mean") -> Tensor:
    """0.5·||x - sg(x - grad)||²: d/dx = grad ("sum") or grad / x.numel() ("mean")."""
    sq = (x.float() - (x.float() - grad.float()).detach()) ** 2
    return 0.5 * (sq.sum() if reduction == "sum" else sq.mean())


def critic_loss(critic, x: Tensor, eps: Tensor, t: Tensor, cond: Cond, bf16: bool = False) -> Tensor:
    """Flow matching (eq. 2) of the critic on detached student samples x (the fake distribution)."""
    return flow_matching_loss(critic, x.detach(), eps, t, cond, bf16)


def first_step_fm_loss(v: Tensor, eps: Tensor, x_data: Tensor) -> Tensor:
    """Paper §6.1: the first-step velocity from z_1 = eps regressed onto the flow-matching target eps - x."""
    return torch.nn.functional.mse_loss(v.float(), eps - x_data)


@torch.no_grad()
def teacher_ode_x0(mix: TeacherMix, z: Tensor, t0: float, nfe: int, shift: float) -> Tensor:
    """The ODE of the λ-weighted guided teachers from z at time t0 to t = 0, in `nfe` Euler steps on the shifted grid
    scaled to [0, t0]. Each step's velocity (z - x0)/t is affine in x0, so mixing the teachers' x0 (`real_x0`)
    mixes their velocities: z' = z + (t' - t)·v, and the last step (t' = 0) lands on x0."""
    times = euler_timesteps(nfe, shift) * t0
    for t, t_next in zip(times[:-1].tolist(), times[1:].tolist()):
        tt = torch.full((len(z),), t, device=z.device)
        x0, _ = real_x0(mix, z, tt)
        z = z + (t_next - t) * v_from_x0(z, tt, x0)
    return z


def regression_loss(x: Tensor, target: Tensor) -> Tensor:
    """DMD's regression term, mean squared error of x_θ to the teachers' ODE output (DMD used LPIPS on images; the
    squared error also serves latents)."""
    return torch.nn.functional.mse_loss(x.float(), target.float())
