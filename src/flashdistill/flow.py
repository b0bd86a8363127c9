"""The time convention of flashdistill, written once: every conversion between x0, eps, v and z_t lives here.

Convention (paper eq. 1-2, the rectified-flow path Qwen-Image is trained with):

    z_t = (1-t)·x + t·eps        t=1 is pure noise, t=0 is data, eps ~ N(0, I)
    v   = eps - x                the velocity the model predicts: v = model(z_t, t, cond)
    x0  = z_t - t·v              data estimate from a velocity
    eps = z_t + (1-t)·v          noise estimate from a velocity

Integrating dz/dt = v from t=1 to t=0 (Euler: z_{t'} = z_t + (t' - t)·v, with t' < t) turns noise into data.
The same sign convention as diffusers' FlowMatchEulerDiscreteScheduler (`prev = sample + (sigma_next - sigma)·v`),
so t here is diffusers' `sigma`.

Images enter model space as x = 2·img - 1 (pixel space, 3 channels, (B, C, H, W)); `to_image` inverts it.
Everything is pure functions on tensors; t may be a float, a 0-d tensor or a (B,) tensor and broadcasts against
(B, C, H, W) through `expand_t`. Run the closed-form checks with `pytest tests/test_flow.py`.
"""

from __future__ import annotations

import numpy as np
import torch

from flashdistill.errors import UserError

Tensor = torch.Tensor


def expand_t(t, like: Tensor) -> Tensor:
    """t as a tensor that broadcasts against `like` (B, ...): a (B,) t becomes (B, 1, 1, 1) for images."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (like.ndim - 1)))


def interpolate(x: Tensor, eps: Tensor, t) -> Tensor:
    """z_t = (1-t)·x + t·eps (paper eq. 1)."""
    t = expand_t(t, x)
    return (1 - t) * x + t * eps


def velocity_target(x: Tensor, eps: Tensor) -> Tensor:
    """The flow-matching regression target v = eps - x (paper eq. 2)."""
    return eps - x


def x0_from_v(z_t: Tensor, t, v: Tensor) -> Tensor:
    """x0 = z_t - t·v."""
    return z_t - expand_t(t, z_t) * v


def eps_from_v(z_t: Tensor, t, v: Tensor) -> Tensor:
    """eps = z_t + (1-t)·v."""
    return z_t + (1 - expand_t(t, z_t)) * v


def v_from_x0(z_t: Tensor, t, x0: Tensor) -> Tensor:
    """v = (z_t - x0) / t; undefined at t=0, where z_t = x0 carries no velocity information."""
    t = expand_t(t, z_t)
    if bool((t <= 0).any()):
        raise ValueError("v_from_x0 needs t > 0: at t=0 the velocity cannot be recovered from x0")
    return (z_t - x0) / t


def shift_time(t, shift: float):
    """SD3 / Qwen-Image resolution shift t' = s·t / (1 + (s-1)·t).

    s > 1 moves time towards noise (more of the schedule is spent at high noise, where global layout forms).
    It fixes 0 and 1 and is monotone for s > 0. diffusers' exponential dynamic shift with mu equals s = exp(mu).
    Written as s·t / (s·t + (1-t)) so that t=0 and t=1 map to exactly 0 and 1 in floating point.
    """
    if shift <= 0:
        raise UserError(f"timestep shift must be > 0, got {shift}")
    return shift * t / (shift * t + (1 - t))


def sample_training_t(n: int, generator: torch.Generator | None = None, shift: float = 1.0, mean: float = 0.0,
                      std: float = 1.0, device=None) -> Tensor:
    """Flow-matching training times, (n,) in (0, 1): logit-normal(mean, std) then `shift_time`.

    Logit-normal (SD3, Esser et al. 2024) puts most mass at mid noise, where the velocity is hardest to predict;
    a shift s > 1 then moves that mass towards noise, in step with a sampler that uses the same shift.
    """
    u = torch.randn(n, generator=generator, device=device) * std + mean  # (n,)
    return shift_time(torch.sigmoid(u), shift)


def euler_timesteps(nfe: int, shift: float = 1.0) -> Tensor:
    """nfe+1 times from 1 to 0 (float32): a uniform grid, then `shift_time`. Step i goes times[i] -> times[i+1]."""
    if nfe < 1:
        raise UserError(f"the number of function evaluations must be >= 1, got {nfe}")
    return shift_time(torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64), shift).float()


def to_model_space(img) -> Tensor:
    """Images in [0, 1], (B, H, W, C) or (H, W, C), numpy or torch -> float32 (B, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(img) if not isinstance(img, Tensor) else img)
    if x.dtype == torch.uint8:
        raise ValueError("to_model_space takes float images in [0, 1], not uint8")
    x = x.float()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected an image (H, W, C) or a batch (B, H, W, C), got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).contiguous() * 2 - 1  # (B, C, H, W)


def to_image(x: Tensor) -> np.ndarray:
    """Model space (B, C, H, W) or (C, H, W) -> float32 numpy (B, H, W, C) or (H, W, C), clipped to [0, 1]."""
    img = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    img = img.permute(0, 2, 3, 1) if img.ndim == 4 else img.permute(1, 2, 0)
    return img.contiguous().numpy()


def flow_matching_loss(model, x, eps, t, cond, bf16: bool = False) -> torch.Tensor:
    """Paper eq. 2: mean ||v_θ(z_t, t, c) - (eps - x)||² with z_t = (1-t)·x + t·eps."""
    z_t = interpolate(x, eps, t)
    with torch.autocast(z_t.device.type, dtype=torch.bfloat16, enabled=bf16):
        v = model(z_t, t, cond)
    return torch.nn.functional.mse_loss(v.float(), velocity_target(x, eps))
