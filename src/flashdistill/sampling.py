"""Samplers: free functions with one signature, over the project's model interface `v = model(z_t, t, cond)`.

- `euler_sample`: the teacher's many-step ODE sampler, z_{t'} = z_t + (t' - t)·v, on the shifted grid of
  `flow.euler_timesteps`, with classifier-free guidance v = v_u + w·(v_c - v_u). With guidance every step costs two
  network passes (run as one doubled batch); `network_passes` counts them honestly for reports.
- `few_step_sample`: the distilled student's sampler: at each of its timesteps predict x0, then re-noise to the
  next timestep with fresh noise (the DMD2 / Qwen-Image-Flash inference rule).
- `sub_schedule`: fewer steps from a student's own timesteps (a 4-step student run at 2 or 1 NFE).

Seeds: noise comes from a `torch.Generator` the caller seeds, so equal seeds give equal images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flashdistill.conditioning import Cond
from flashdistill.flow import euler_timesteps, interpolate, x0_from_v


def network_passes(nfe: int, cfg_scale: float) -> int:
    """Forward passes an `nfe`-step sample costs: guidance doubles each step."""
    return nfe * (2 if cfg_scale != 1.0 else 1)


def concat_cond(a: Cond, b: Cond) -> Cond:
    """The rows of `a`, then those of `b`, text padded to the longer length (padding is masked out)."""
    length = max(a.text.shape[1], b.text.shape[1])

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1])) if x.dim() == 3 else \
            torch.nn.functional.pad(x, (0, length - x.shape[1]))

    source = None if a.source is None else torch.cat([a.source, b.source])
    has_source = None if a.has_source is None else torch.cat([a.has_source, b.has_source])
    category = None if a.category is None else list(a.category) + list(b.category or a.category)
    return Cond(text=torch.cat([pad(a.text), pad(b.text)]), text_mask=torch.cat([pad(a.text_mask), pad(b.text_mask)]),
                source=source, has_source=has_source, category=category)


def guided_velocity(model, z_t: Tensor, t: Tensor, cond: Cond, uncond: Cond | None, cfg_scale: float,
                    rule=None) -> Tensor:
    """Classifier-free guided velocity; `uncond` is the same batch with the text dropped (sources kept). `rule`
    (v_c, v_u, w) -> v replaces v_u + w·(v_c - v_u), e.g. Qwen-Image's norm-preserving true CFG."""
    if uncond is None or cfg_scale == 1.0:
        return model(z_t, t, cond)
    v = model(torch.cat([z_t, z_t]), torch.cat([t, t]), concat_cond(cond, uncond))
    v_c, v_u = v.chunk(2)
    return v_u + cfg_scale * (v_c - v_u) if rule is None else rule(v_c, v_u, cfg_scale)


@torch.no_grad()
def euler_sample(model, noise: Tensor, cond: Cond, uncond: Cond | None = None, nfe: int = 50, shift: float = 1.0,
                 cfg_scale: float = 1.0) -> Tensor:
    """Integrate the flow ODE from t=1 (noise) to t=0 in `nfe` Euler steps. Returns x0 in model space."""
    ts = euler_timesteps(nfe, shift).to(noise.device)
    z_t = noise
    for t, t_next in zip(ts[:-1], ts[1:]):
        v = guided_velocity(model, z_t, t.expand(len(z_t)), cond, uncond, cfg_scale)
        z_t = z_t + (t_next - t) * v
    return z_t


def sub_schedule(timesteps: list[float] | tuple[float, ...], nfe: int) -> list[float]:
    """`nfe` of a K-step student's timesteps, always starting at the first (pure noise): indices round(i·K/nfe).

    K=4 [1, .75, .5, .25] gives [1, .5] at 2 NFE and [1] at 1 NFE: each kept step re-noises to a time the student
    was trained at, and the last step's x0 is the sample, as in DMD2's evaluation of a student at fewer steps.
    """
    k = len(timesteps)
    if not 1 <= nfe <= k:
        from flashdistill.errors import UserError

        raise UserError(f"a {k}-step student runs at 1 to {k} NFE, not {nfe}")
    return [float(timesteps[round(i * k / nfe)]) for i in range(nfe)]


@torch.no_grad()
def few_step_sample(model, noise: Tensor, cond: Cond, timesteps: list[float],
                    generator: torch.Generator | None = None, renoise: list[Tensor] | None = None) -> Tensor:
    """The student's sampler: x0 = G(z_t, t) at each step, re-noised to the next step with fresh noise.

    The re-noising draws come from `generator`, or from `renoise` (one tensor per later step) when the caller
    wants every item's noise fixed by its own seed.
    """
    if renoise is not None and len(renoise) != len(timesteps) - 1:
        raise ValueError(f"renoise needs {len(timesteps) - 1} tensors, got {len(renoise)}")
    z_t = noise
    x0 = noise
    for k, t in enumerate(timesteps):
        tt = torch.full((len(z_t),), float(t), device=noise.device)
        x0 = x0_from_v(z_t, tt, model(z_t, tt, cond))
        if k + 1 < len(timesteps):
            eps = renoise[k] if renoise is not None else \
                torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
            z_t = interpolate(x0, eps, timesteps[k + 1])
    return x0
