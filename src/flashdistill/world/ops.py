"""Exact image operations of the world: the five styles of `style_transfer` and the degradations of
`perceptual_enhancement` (also used by the degraded reference models `oracle-blur:S` and `oracle-noise:S`).

All take and return float32 (H, W, 3) arrays in [0, 1]. Degradations that draw noise take an explicit seed, so an
edit case rebuilds its source image exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from flashdistill.errors import UserError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], np.float32)
OUTLINE_THRESHOLD = 0.08


def grayscale(img: np.ndarray) -> np.ndarray:
    y = img @ LUMA
    return np.repeat(y[..., None], 3, axis=-1)


def sepia(img: np.ndarray) -> np.ndarray:
    return np.clip(img @ SEPIA.T, 0.0, 1.0)


def invert(img: np.ndarray) -> np.ndarray:
    return 1.0 - img


def posterize(img: np.ndarray, levels: int = 3) -> np.ndarray:
    return np.round(img * (levels - 1)) / (levels - 1)


def outline(img: np.ndarray) -> np.ndarray:
    """Black line drawing on white: a pixel is ink where luma changes by more than a threshold to its right/below."""
    y = img @ LUMA
    edge = np.zeros_like(y, dtype=bool)
    edge[:, :-1] |= np.abs(y[:, 1:] - y[:, :-1]) > OUTLINE_THRESHOLD
    edge[:-1, :] |= np.abs(y[1:, :] - y[:-1, :]) > OUTLINE_THRESHOLD
    return np.repeat(np.where(edge, 0.0, 1.0)[..., None], 3, axis=-1).astype(np.float32)


STYLES = {"grayscale": grayscale, "sepia": sepia, "invert": invert, "posterize": posterize, "outline": outline}


def apply_style(img: np.ndarray, op: str) -> np.ndarray:
    if op not in STYLES:
        raise UserError(f"unknown style op {op!r} (one of {', '.join(STYLES)})")
    return STYLES[op](img).astype(np.float32)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return img
    return gaussian_filter(img, sigma=(sigma, sigma, 0), mode="nearest").astype(np.float32)


def add_noise(img: np.ndarray, std: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(img.shape).astype(np.float32)
    return np.clip(img + std * noise, 0.0, 1.0)


def lowres(img: np.ndarray, factor: int) -> np.ndarray:
    """Box-downsample by `factor`, then nearest-upsample back: blocky loss of detail."""
    h, w, c = img.shape
    small = img.reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))
    return np.repeat(np.repeat(small, factor, axis=0), factor, axis=1).astype(np.float32)


def low_contrast(img: np.ndarray, gain: float) -> np.ndarray:
    return (0.5 + (img - 0.5) * gain).astype(np.float32)


DEGRADATIONS = ("blur", "noise", "lowres", "contrast")


def degrade(img: np.ndarray, spec: dict) -> np.ndarray:
    """Apply a degradation spec {"type": ..., "strength": ..., "seed": ...} (seed only for noise)."""
    kind, strength = spec.get("type"), spec.get("strength")
    if kind not in DEGRADATIONS or not isinstance(strength, (int, float)):
        raise UserError(f"bad degradation {spec!r}: need type in {DEGRADATIONS} and a numeric strength")
    if kind == "blur":
        return blur(img, float(strength))
    if kind == "noise":
        return add_noise(img, float(strength), int(spec.get("seed", 0)))
    if kind == "lowres":
        return lowres(img, int(strength))
    return low_contrast(img, float(strength))
