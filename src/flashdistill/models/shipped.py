"""Where the shipped teachers live and how a model name resolves to a folder: `teacher_folder("teacher:base")`.

`teacher:NAME` names a folder of `flashdistill/assets/teachers/` (see the model cards there); any other string is a
path to a folder written by `FlowModel.save_pretrained`. Below the pipeline, so that models (a LoRA's base) and the
engine resolve names without importing inference code.
"""

from __future__ import annotations

from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.models.folders import CONFIG_FILE

TEACHERS_DIR = Path(__file__).resolve().parent.parent / "assets" / "teachers"
TEACHER_NAMES = ("base", "specialized")


def teacher_folder(spec: str) -> Path:
    """`teacher:NAME` -> the shipped folder; a path -> itself. Errors name what is missing and how to make it."""
    if spec.startswith("teacher:"):
        name = spec.split(":", 1)[1]
        if name not in TEACHER_NAMES:
            raise UserError(f"unknown teacher '{name}' (shipped: {', '.join(TEACHER_NAMES)})")
        folder = TEACHERS_DIR / name
        if not (folder / CONFIG_FILE).is_file():
            raise UserError(f"teacher '{name}' is not in this installation ({folder} is missing); train it with "
                            f"flashdistill teacher {'train' if name == 'base' else 'specialize'} "
                            f"configs/teacher_{name}.yaml and pass --model <run>/teacher")
        return folder
    folder = Path(spec)
    if not (folder / CONFIG_FILE).is_file():
        raise UserError(f"--model {spec}: not a model name and not a folder holding {CONFIG_FILE}")
    return folder
