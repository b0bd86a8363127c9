"""Specialized teachers: `flashdistill teacher specialize CONFIG --out DIR`.

A specialized teacher is the base teacher fine-tuned on a category-heavy mix (e.g. text-centric T2I and text
editing), the "expert" that step-wise multi-teacher guidance (paper eq. 5-7) mixes in. It is ordinary teacher
training that must start from a base teacher: `run.init_from` loads the base weights into both the model and its
EMA; on `--resume` the checkpoint wins. Everything else (loss, EMA, checkpoints, export) is `train.train_teacher`.
"""

from __future__ import annotations

from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.teacher.config import TeacherConfig
from flashdistill.teacher.train import train_teacher


def specialize_teacher(config: TeacherConfig, out: Path, resume: bool = False, encoder=None,
                       command: str | None = None) -> dict:
    if not config.run.init_from:
        raise UserError("run.init_from: specialize needs a base teacher folder to start from")
    return train_teacher(config, out, resume, encoder, command)
