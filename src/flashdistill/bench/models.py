"""Models that the benchmarks can run, by name (`--model`).

Reference models, so the judges can be checked before any network exists:
- `oracle`: the exact render (T2I) or the exact edit target;
- `noise`: uniform noise;
- `oracle-blur:S` / `oracle-noise:S`: the oracle with Gaussian blur of sigma S px / Gaussian noise of std S.
Networks: `teacher:base`, `teacher:specialized` (shipped) or any model folder, through `flashdistill.pipeline`.

A model answers `t2i(cases, nfe) -> images` and `edit(cases, sources, nfe) -> images` (float32 (H, W, 3) in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashdistill.errors import UserError
from flashdistill.world import ops
from flashdistill.world.edits import target_image
from flashdistill.world.render import render


class OracleModel:
    """Exact answers from the world; `degradation` (kind, strength) turns it into a degraded oracle."""

    def __init__(self, name: str, resolution: int, degradation: tuple[str, float] | None = None):
        self.name, self.resolution, self.degradation = name, resolution, degradation

    def _degrade(self, img: np.ndarray, seed: int) -> np.ndarray:
        if self.degradation is None:
            return img
        kind, strength = self.degradation
        return ops.blur(img, strength) if kind == "blur" else ops.add_noise(img, strength, seed)

    def t2i(self, cases, nfe=None) -> list[np.ndarray]:
        for case in cases:
            if case.record is None:
                raise UserError(f"case {case.id}: model '{self.name}' needs a world 'record' in the case")
        return [self._degrade(render(c.record, self.resolution), c.seed) for c in cases]

    def edit(self, cases, sources, nfe=None) -> list[np.ndarray]:
        for case in cases:
            if case.source is None:
                raise UserError(f"case {case.id}: model '{self.name}' needs a world 'source' in the case")
        return [self._degrade(target_image(c.source, c.edit, self.resolution), c.seed) for c in cases]


class NoiseModel:
    name = "noise"

    def __init__(self, resolution: int):
        self.resolution = resolution

    def _noise(self, seed: int) -> np.ndarray:
        return np.random.default_rng([3, seed]).random((self.resolution, self.resolution, 3), dtype=np.float32)

    def t2i(self, cases, nfe=None):
        return [self._noise(c.seed) for c in cases]

    def edit(self, cases, sources, nfe=None):
        return [self._noise(c.seed) for c in cases]


def _strength(spec: str) -> float:
    try:
        value = float(spec.split(":", 1)[1])
    except ValueError:
        raise UserError(f"model '{spec}': the strength after ':' must be a number") from None
    if value <= 0:
        raise UserError(f"model '{spec}': the strength must be positive")
    return value


def load_model(spec: str, resolution: int = 32, cfg_scale: float | None = None, batch_size: int = 32):
    """Build a model from its `--model` name: a reference model, `teacher:NAME`, or a model folder."""
    if spec == "oracle":
        return OracleModel(spec, resolution)
    if spec == "noise":
        return NoiseModel(resolution)
    for kind in ("blur", "noise"):
        if spec.startswith(f"oracle-{kind}:"):
            return OracleModel(spec, resolution, (kind, _strength(spec)))
    if Path(spec).is_dir():
        from flashdistill.distill.export import is_student_folder
        from flashdistill.distill.qwen_export import QwenStudent, qwen_student_folder
        from flashdistill.pipeline import load_student_model

        if qwen_student_folder(spec) is not None:  # sampled by diffusers' own Qwen-Image pipelines
            return QwenStudent(spec)

        if is_student_folder(spec):
            return load_student_model(spec, batch_size=batch_size)
    if spec.startswith("teacher:") or Path(spec).is_dir():
        from flashdistill.pipeline import load_teacher

        model = load_teacher(spec, cfg_scale, batch_size=batch_size)
        if model.resolution != resolution:
            raise UserError(f"model '{spec}' works at {model.resolution} px; pass --resolution {model.resolution}")
        return model
    raise UserError(f"unknown model '{spec}' (known: oracle, noise, oracle-blur:S, oracle-noise:S, "
                    f"teacher:base, teacher:specialized, or a model folder)")
