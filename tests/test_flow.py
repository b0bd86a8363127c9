"""Closed-form checks of the time convention in flashdistill.flow."""

import numpy as np
import pytest
import torch

from flashdistill import flow
from flashdistill.errors import UserError


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 1.0], dtype=torch.float64)
    z_t = flow.interpolate(x, eps, t)
    v = flow.velocity_target(x, eps)
    torch.testing.assert_close(flow.x0_from_v(z_t, t, v), x)
    torch.testing.assert_close(flow.eps_from_v(z_t, t, v), eps)
    torch.testing.assert_close(flow.v_from_x0(z_t, t, x), v)
    # Endpoints of the path: t=0 is data, t=1 is noise.
    torch.testing.assert_close(flow.interpolate(x, eps, 0.0), x)
    torch.testing.assert_close(flow.interpolate(x, eps, torch.ones(5, dtype=torch.float64)), eps)


def test_t_broadcasting():
    z = torch.zeros(3, 2, 4, 4)
    assert flow.expand_t(torch.rand(3), z).shape == (3, 1, 1, 1)
    assert flow.expand_t(0.5, z).shape == ()
    with pytest.raises(ValueError):
        flow.expand_t(torch.rand(4), z)
    with pytest.raises(ValueError):
        flow.v_from_x0(z, torch.zeros(3), z)


def _gaussian_velocity(z_t, t, mu, s):
    """Exact marginal velocity E[eps - x | z_t] for x ~ N(mu, s²), eps ~ N(0, 1).

    z_t is Gaussian with mean m = (1-t)·mu and variance var = (1-t)²s² + t²; (x, eps, z_t) are jointly Gaussian, so
    E[x|z] = mu + (1-t)s²/var·(z - m) and E[eps|z] = t/var·(z - m).
    """
    m = (1 - t) * mu
    var = (1 - t) ** 2 * s**2 + t**2
    return (t - (1 - t) * s**2) / var * (z_t - m) - mu


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_on_exact_gaussian_velocity_recovers_data(shift):
    mu, s = 1.5, 0.5
    z = torch.randn(20000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # z_1 ~ N(0, 1)
    z1 = z.clone()
    times = flow.euler_timesteps(1000, shift).double()
    for t, t_next in zip(times[:-1], times[1:]):
        z = z + (t_next - t) * _gaussian_velocity(z, t, mu, s)
    assert abs(z.mean().item() - mu) < 0.02
    assert abs(z.std().item() - s) < 0.02
    # The probability-flow ODE between two 1-D Gaussians is the monotone affine map z_1 -> mu + s·z_1.
    assert (z - (mu + s * z1)).abs().max().item() < 1e-2


@pytest.mark.parametrize("nfe", [1, 2, 4, 7])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_is_exact_on_constant_velocity(nfe, shift):
    c = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    z1 = torch.tensor([0.1, 0.2, -0.4], dtype=torch.float64)
    z = z1.clone()
    times = flow.euler_timesteps(nfe, shift).double()
    for t, t_next in zip(times[:-1], times[1:]):
        z = z + (t_next - t) * c
    torch.testing.assert_close(z, z1 - c)  # the exact solution of dz/dt = c from t=1 to t=0


def test_shift_time_properties():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(flow.shift_time(t, 1.0), t)
    for s in (0.3, 3.0, 6.0):
        ts = flow.shift_time(t, s)
        assert ts[0].item() == 0.0 and ts[-1].item() == 1.0
        assert bool((ts[1:] > ts[:-1]).all())
        torch.testing.assert_close(flow.shift_time(ts, 1 / s), t)  # the inverse shift is 1/s
    assert flow.shift_time(0.5, 3.0) == pytest.approx(0.75)
    with pytest.raises(UserError):
        flow.shift_time(t, 0.0)


def test_euler_timesteps():
    times = flow.euler_timesteps(4, 3.0)
    assert times.shape == (5,) and times.dtype == torch.float32
    assert times[0].item() == 1.0 and times[-1].item() == 0.0
    assert bool((times[1:] < times[:-1]).all())
    assert times[2].item() == pytest.approx(0.75)
    torch.testing.assert_close(flow.euler_timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(UserError):
        flow.euler_timesteps(0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_sample_training_t_is_shifted_logit_normal(shift):
    t = flow.sample_training_t(50000, torch.Generator().manual_seed(2), shift=shift)
    assert t.shape == (50000,) and bool(((t > 0) & (t < 1)).all())
    # t = shift(sigmoid(u)), u ~ N(0, 1), and shift is monotone: P(t < shift(sigmoid(q))) = Phi(q).
    for q, phi in ((0.0, 0.5), (1.0, 0.8413), (-1.0, 0.1587)):
        edge = flow.shift_time(torch.sigmoid(torch.tensor(q)), shift)
        assert (t < edge).double().mean().item() == pytest.approx(phi, abs=0.01)
    again = flow.sample_training_t(50000, torch.Generator().manual_seed(2), shift=shift)
    torch.testing.assert_close(t, again)


def test_model_space_round_trip():
    img = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    x = flow.to_model_space(img)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[1, 2, 5, 7], torch.tensor(2 * img[1, 5, 7, 2] - 1))
    np.testing.assert_allclose(flow.to_image(x), img, atol=1e-6)
    assert flow.to_model_space(img[0]).shape == (1, 3, 32, 32)
    assert flow.to_image(x[0]).shape == (32, 32, 3)
    assert flow.to_image(torch.full((1, 3, 2, 2), 5.0)).max() == 1.0
