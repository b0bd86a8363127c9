"""Inference: prompts (and edit sources) in, images out, for any model with the interface `v = model(z_t, t, cond)`.

`FlowPipeline` holds a model, the text encoder and a `SamplingSpec`, and serves three callers with one code path:
`flashdistill generate`, `flashdistill edit`, and the benchmarks (it answers `t2i(cases, nfe)` and
`edit(cases, sources, nfe)` like the reference models of `flashdistill.bench.models`).

- Teachers sample with the Euler ODE sampler and classifier-free guidance (`sampling.euler_sample`): each step costs
  two network passes when `cfg_scale != 1`; `network_passes` reports that honestly.
- Distilled students sample with their own few timesteps (`sampling.few_step_sample`), no guidance; `--nfe` below
  their step count takes a `sampling.sub_schedule` of those timesteps. `StudentModel` is a `FlowPipeline` with the
  student's schedule (`load_student_model(run or export folder)`).
- Noise is drawn per item from `torch.Generator().manual_seed(seed)`: an image depends on its seed only, never on
  the batch it was generated in, so a resumed or re-batched bench run reproduces every image.
- A model whose output holds NaN or Inf (broken weights, e.g. from a diverged run) is an error naming the model,
  never an image: `to_image` would clip NaN to black and a benchmark would score it.
- Text embeddings are rounded through float16, exactly as the training cache stores them, so a teacher sees at
  inference the very embeddings it was trained on.

Teachers by name: `teacher:base` and `teacher:specialized` are the folders shipped in `flashdistill/assets/teachers`
(see the model card there); any folder written by `FlowModel.save_pretrained` also works as `--model PATH`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from flashdistill.conditioning import Cond
from flashdistill.distill.export import Student, load_student
from flashdistill.errors import UserError
from flashdistill.flow import to_image, to_model_space
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.shipped import recorded_sampling, teacher_folder
from flashdistill.sampling import euler_sample, few_step_sample, network_passes, sub_schedule

DEFAULT_TEACHER_NFE = 50
DEFAULT_CFG_SCALE = 4.0  # overridden by the `sampling.cfg_scale` a shipped teacher's teacher.json records


@dataclass(frozen=True)
class SamplingSpec:
    """How a model samples. `timesteps` set -> the few-step student sampler; None -> the Euler ODE sampler."""

    nfe: int = DEFAULT_TEACHER_NFE
    shift: float = 1.0
    cfg_scale: float = DEFAULT_CFG_SCALE
    timesteps: tuple[float, ...] | None = None

    def passes(self, nfe: int | None = None) -> int:
        if self.timesteps is not None:
            return nfe if nfe is not None else len(self.timesteps)
        return network_passes(nfe if nfe is not None else self.nfe, self.cfg_scale)


class FlowPipeline:
    def __init__(self, model: FlowModel, spec: SamplingSpec, name: str, encoder=None, batch_size: int = 32):
        self.model = model.eval().requires_grad_(False)
        self.spec, self.name, self.batch_size = spec, name, batch_size
        self.resolution = model.config.resolution
        self.default_nfe = len(spec.timesteps) if spec.timesteps is not None else spec.nfe
        self._encoder = encoder  # made (or re-flagged) for the model's text convention on first use
        self._memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---- text ------------------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb (B, L, D), mask (B, L)) with each text encoded once per pipeline."""
        missing = sorted({t for t in texts if t not in self._memo})
        if missing:
            from flashdistill.models.text import encoder_for

            self._encoder = encoder_for(self._encoder, self.model.config.spell_quoted)
            for start in range(0, len(missing), 64):
                chunk = missing[start:start + 64]
                emb, mask = self._encoder.encode(chunk)
                for i, text in enumerate(chunk):
                    n = int(mask[i].sum())
                    self._memo[text] = (emb[i, :n].half().float(), mask[i, :n])  # float16: as the cache stores
        length = max(self._memo[t][0].shape[0] for t in texts)
        emb = torch.zeros(len(texts), length, self._memo[texts[0]][0].shape[1])  # (B, L, D)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)  # (B, L)
        for i, text in enumerate(texts):
            e, m = self._memo[text]
            emb[i, : len(m)], mask[i, : len(m)] = e, m
        return emb, mask

    # ---- sampling --------------------------------------------------------------------------------------
    def sample(self, texts: list[str], sources: list[np.ndarray | None], seeds: list[int], nfe: int | None = None,
               categories: list[str] | None = None, cfg_scale: float | None = None) -> list[np.ndarray]:
        """Images (H, W, 3) float32 in [0, 1]; `sources[i]` is an edit source image or None for T2I."""
        if not (len(texts) == len(sources) == len(seeds)):
            raise ValueError("texts, sources and seeds must have the same length")
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            sl = slice(start, start + self.batch_size)
            out += self._sample_batch(texts[sl], sources[sl], seeds[sl], nfe, None if categories is None
                                      else categories[sl], cfg_scale)
        return out

    def _cond(self, texts, sources, categories) -> Cond:
        emb, mask = self._encode(texts)
        has_source = torch.tensor([s is not None for s in sources])
        source = None
        if bool(has_source.any()):
            blank = np.zeros((self.resolution, self.resolution, 3), np.float32)
            imgs = [self._check_source(s) if s is not None else blank for s in sources]
            source = to_model_space(np.stack(imgs)) * has_source[:, None, None, None]  # zeros on T2I rows
        return Cond(emb, mask, source, has_source, categories)

    def _check_source(self, img: np.ndarray) -> np.ndarray:
        if img.shape != (self.resolution, self.resolution, 3):
            raise UserError(f"edit source is {img.shape[1]}x{img.shape[0]}, the model works at "
                            f"{self.resolution}x{self.resolution} (resize it first)")
        return img.astype(np.float32)

    def _noise(self, seeds: list[int], count: int) -> list[torch.Tensor]:
        """`count` noise tensors (B, 3, H, W): the initial noise, then the student's re-noising draws."""
        shape = (3, self.resolution, self.resolution)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        return [torch.stack([torch.randn(shape, generator=g) for g in gens]) for _ in range(count)]

    @torch.no_grad()
    def _sample_batch(self, texts, sources, seeds, nfe, categories, cfg_scale) -> list[np.ndarray]:
        cond = self._cond(texts, sources, categories)
        spec = self.spec
        if nfe is not None and nfe < 1:
            raise UserError(f"--nfe must be at least 1, got {nfe}")
        if spec.timesteps is not None:
            steps = sub_schedule(spec.timesteps, nfe if nfe is not None else len(spec.timesteps))
            noise = self._noise(seeds, len(steps))
            x0 = few_step_sample(self.model, noise[0], cond, steps, renoise=noise[1:])
        else:
            nfe = nfe if nfe is not None else spec.nfe
            w = spec.cfg_scale if cfg_scale is None else cfg_scale
            empty = [""] * len(texts)
            uncond = self._cond(empty, sources, categories) if w != 1.0 else None  # sources kept, text dropped
            x0 = euler_sample(self.model, self._noise(seeds, 1)[0], cond, uncond, nfe, spec.shift, w)
        bad = (~torch.isfinite(x0)).flatten(1).any(1)  # (B,)
        if bool(bad.any()):
            raise UserError(f"model {self.name} produced NaN/Inf for {int(bad.sum())} of {len(bad)} images (seeds "
                            f"{[s for s, b in zip(seeds, bad.tolist()) if b][:5]}): its weights are broken, e.g. "
                            f"saved by a diverged run; no image was written")
        return list(to_image(x0))

    # ---- the benchmark interface -----------------------------------------------------------------------
    def t2i(self, cases, nfe=None) -> list[np.ndarray]:
        return self.sample([c.prompt for c in cases], [None] * len(cases), [c.seed for c in cases], nfe,
                           [c.category for c in cases])

    def edit(self, cases, sources, nfe=None) -> list[np.ndarray]:
        return self.sample([c.instruction for c in cases], list(sources), [c.seed for c in cases], nfe,
                           [c.category for c in cases])


def teacher_sampling(folder: str | Path) -> SamplingSpec:
    """The shift and CFG scale a teacher folder's teacher.json records (defaults without one)."""
    shift, cfg_scale = recorded_sampling(folder, DEFAULT_CFG_SCALE)
    return SamplingSpec(shift=shift, cfg_scale=cfg_scale)


def load_teacher(spec: str, cfg_scale: float | None = None, encoder=None, batch_size: int = 32) -> FlowPipeline:
    """A teacher as a pipeline, with the shift and CFG scale its teacher.json records (CLI values win)."""
    folder = teacher_folder(spec)
    spec_ = teacher_sampling(folder)
    if cfg_scale is not None:
        spec_ = replace(spec_, cfg_scale=float(cfg_scale))
    name = spec if cfg_scale is None else f"{spec}@cfg{cfg_scale:g}"
    model = FlowModel.from_pretrained(folder, torch_dtype=torch.float32)  # shipped teachers are stored in float16
    return FlowPipeline(model, spec_, name, encoder, batch_size)


class StudentModel(FlowPipeline):
    """A student as a bench / generate model: the few-step sampler at its own timesteps, no guidance."""

    def __init__(self, student: Student, name: str = "student", encoder=None, batch_size: int = 32):
        spec = SamplingSpec(nfe=len(student.timesteps), timesteps=tuple(student.timesteps), cfg_scale=1.0)
        super().__init__(student.model, spec, name, encoder, batch_size)
        self.student = student


def load_student_model(path: str | Path, name: str | None = None, encoder=None, batch_size: int = 32):
    """`load_student` wrapped as a bench / generate model named after the folder."""
    return StudentModel(load_student(path), name or str(path), encoder, batch_size)
