"""Where the shipped teachers live and how a model name resolves to a folder: `teacher_folder("teacher:base")`.

`teacher:NAME` names a folder of `flashdistill/assets/teachers/` (see the model cards there); any other string is a
path to a folder written by `FlowModel.save_pretrained`. Below the pipeline, so that models (a LoRA's base) and the
engine resolve names without importing inference code.
"""

from __future__ import annotations

import math
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object
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


def recorded_sampling(folder: str | Path, default_cfg: float) -> tuple[float, float]:
    """(shift, cfg_scale) a teacher folder's teacher.json records under `sampling` (1.0 and `default_cfg` when
    absent); a value that is not a number >= 0 is a UserError naming the file and key."""
    info_path = Path(folder) / "teacher.json"
    sampling = read_json_object(info_path, "teacher record").get("sampling", {}) if info_path.is_file() else {}
    out = []
    for key, default in (("shift", 1.0), ("cfg_scale", default_cfg)):
        value = sampling.get(key, default) if isinstance(sampling, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise UserError(f"{info_path}: sampling.{key} must be a number >= 0, got {value!r}")
        out.append(float(value))
    return out[0], out[1]
