"""The distilled student on disk and back: export and `load_student`.

Export layout (`<run>/student/` = EMA weights at the end, `<run>/best/` = the best quick-evaluation checkpoint):

    transformer/config.json + diffusion_pytorch_model.safetensors
                            diffusers' own save_pretrained: `QwenImageTransformer2DModel.from_pretrained(dir,
                            subfolder="transformer")` loads it, as the Qwen-Image pipelines' layout expects
    flashdistill_model.json our model config (FlowModel.from_pretrained)
    scheduler/scheduler_config.json
                            a FlowMatchEulerDiscreteScheduler with stochastic_sampling=true (predict x0, re-noise to
                            the next sigma: the student's sampler) and shift 1.0, plus `_student_sigmas`, the
                            student's timesteps (already shifted; `set_timesteps(sigmas=_student_sigmas)` reproduces
                            them exactly because the scheduler's own shift is 1; the leading underscore marks
                            metadata, which diffusers keeps in `scheduler.config` without an "unexpected key" warning)
    student.json            timesteps, which weights (ema | best), iteration, score, recipe

`load_student(path)` takes a run folder (prefers best/, then student/, then the EMA weights of the last checkpoint
of an unfinished run) or an export folder, and returns a `Student`: the model interface `v = model(z_t, t, cond)`
plus `.timesteps`. The student as a bench / generate model is `flashdistill.pipeline.StudentModel`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.files import read_json_object, swap_in
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.runtime.checkpoint import find_checkpoint, read_state, restore_latest

STUDENT_FILE = "student.json"
SCHEDULER_FOLDER = "scheduler"
CHECKPOINT_FILES = ("student.safetensors", "ema.safetensors", "critic.safetensors", "state.safetensors",
                    "state.json")
PREFERENCE = ("best", "student")  # sub-folders of a run, in the order load_student tries them


class Student(torch.nn.Module):
    """A distilled few-step generator: `v = student(z_t, t, cond)`, sampled at `student.timesteps`."""

    def __init__(self, model: FlowModel, timesteps: list[float], info: dict | None = None):
        super().__init__()
        self.model = model
        self.timesteps = [float(t) for t in timesteps]
        self.info = dict(info or {})

    @property
    def config(self) -> MMDiTConfig:
        return self.model.config

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.model(z_t, t, cond)


def write_scheduler_config(folder: Path, timesteps: list[float]) -> Path:
    """diffusers scheduler config for the student's sampler, holding its timesteps as `_student_sigmas`."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    scheduler.register_to_config(_student_sigmas=[float(t) for t in timesteps])
    scheduler.save_pretrained(folder / SCHEDULER_FOLDER)
    return folder / SCHEDULER_FOLDER / "scheduler_config.json"


def export_student(model: FlowModel, folder: Path, timesteps: list[float], info: dict) -> Path:
    """Write an export folder (layout above) atomically: a temporary sibling renamed into place."""
    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}-tmp-{uuid.uuid4().hex[:8]}"
    model.save_pretrained(tmp)
    write_scheduler_config(tmp, timesteps)
    meta = {"format": 1, "timesteps": [float(t) for t in timesteps], **info}
    (tmp / STUDENT_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return swap_in(tmp, folder)


def check_timesteps(timesteps, where: str) -> list[float]:
    """A student's timesteps as read from disk: a non-empty, strictly decreasing list in (0, 1]."""
    ok = isinstance(timesteps, list) and timesteps and all(
        isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in timesteps)
    if not ok or any(b >= a for a, b in zip(timesteps, timesteps[1:])):
        raise UserError(f"{where}: 'timesteps' must be a decreasing list of numbers in (0, 1], got {timesteps!r}"[:300])
    return [float(t) for t in timesteps]


def _from_export(folder: Path) -> Student:
    info = read_json_object(folder / STUDENT_FILE, "student record")
    timesteps = check_timesteps(info.get("timesteps"), str(folder / STUDENT_FILE))
    return Student(FlowModel.from_pretrained(folder, torch_dtype=torch.float32), timesteps, info)


def _from_checkpoint(run: Path) -> Student | None:
    """The EMA student of the newest checkpoint that reads back (the previous one if the newest is damaged)."""

    def load(ckpt: Path) -> Student:
        state = read_state(ckpt)
        spec = state["meta"]["student"]
        model = FlowModel(MMDiTConfig(**spec["config"]))
        model.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
        info = {"weights": "ema", "iteration": state["step"], "from": str(ckpt)}
        return Student(model, check_timesteps(spec["timesteps"], str(ckpt / "state.json")), info)

    return restore_latest(run, CHECKPOINT_FILES, load)


def load_student(path: str | Path) -> Student:
    """The student of a run folder (best, then EMA export, then last checkpoint's EMA) or of an export folder."""
    path = Path(path)
    if (path / STUDENT_FILE).is_file():
        return _from_export(path).eval().requires_grad_(False)
    for sub in PREFERENCE:
        if (path / sub / STUDENT_FILE).is_file():
            return _from_export(path / sub).eval().requires_grad_(False)
    student = _from_checkpoint(path) if path.is_dir() else None
    if student is None:
        raise UserError(f"{path}: no distilled student here (expected {STUDENT_FILE}, best/, student/ or a "
                        f"distillation checkpoint/)")
    return student.eval().requires_grad_(False)


def is_student_folder(path: str | Path) -> bool:
    """Whether `path` holds a student (export folder or distillation run): for model registries."""
    path = Path(path)
    return (path / STUDENT_FILE).is_file() or any((path / s / STUDENT_FILE).is_file() for s in PREFERENCE) or \
        find_checkpoint(path, CHECKPOINT_FILES) is not None
