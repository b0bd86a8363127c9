"""Ship a trained teacher inside the package: `python -m flashdistill.teacher.ship RUN/teacher NAME [--cfg W]`.

Copies the teacher's weights into `flashdistill/assets/teachers/NAME/` stored as float16 (half the bytes; the
pipeline loads them back as float32, and every shipped figure is measured on the shipped file), records the chosen
classifier-free guidance scale in teacher.json (`sampling.cfg_scale`, chosen on the val split with
`benchmarks/teacher_cfg.py`), and writes the model card `MODEL_CARD.md` from what the training run recorded: the
exact command, config and seed, parameter count, training time and hardware.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import uuid
from pathlib import Path

import torch

from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel
from flashdistill.pipeline import TEACHER_NAMES, TEACHERS_DIR


def model_card(name: str, info: dict, num_params: int, size_mb: float) -> str:
    cfg = info.get("config", {})
    train, model = cfg.get("train", {}), cfg.get("model", {})
    hw = info.get("hardware", {})
    mix = cfg.get("mix", {})
    return "\n".join([
        f"# teacher:{name}",
        "",
        f"A flow-matching teacher of the embedded world (T2I and editing in one network): diffusers' "
        f"`QwenImageTransformer2DModel`, preset `{model.get('preset')}`, {num_params:,} parameters, "
        f"{model.get('resolution')} px, pixel space. Weights: EMA (decay {info.get('ema_decay')}), stored as "
        f"float16 ({size_mb:.1f} MB), loaded as float32.",
        "",
        "| | |", "|---|---|",
        f"| command | `{info.get('command')}` |",
        f"| seed | {train.get('seed')} |",
        f"| steps x batch | {info.get('steps')} x {train.get('batch_size')} |",
        f"| initialised from | {cfg.get('run', {}).get('init_from') or 'random (seeded)'} |",
        f"| T2I composition | {mix.get('composition')} |",
        f"| edit mix | {mix.get('edit_mix')} |",
        f"| T2I : Edit | {mix.get('t2i_weight')} : {mix.get('edit_weight')} |",
        f"| final training loss | {info.get('final_loss'):.4f} |" if info.get("final_loss") is not None else
        "| final training loss | n/a |",
        f"| training time | {info.get('wall_time_s', 0) / 60:.1f} min |",
        f"| hardware | {hw.get('cpus')} CPUs ({hw.get('machine')}), torch {hw.get('torch')}, "
        f"{hw.get('torch_threads')} threads |",
        f"| sampling | Euler, shift {info.get('sampling', {}).get('shift')}, CFG scale "
        f"{info.get('sampling', {}).get('cfg_scale')} (chosen on the val split) |",
        f"| text encoder | {info.get('text_encoder')} |",
        "",
        "The full training config is in `teacher.json`. Benchmark results: `docs/results.md`.",
        "",
    ])


def ship(run_teacher: Path, name: str, cfg_scale: float | None, dest_root: Path = TEACHERS_DIR) -> Path:
    if name not in TEACHER_NAMES:
        raise UserError(f"NAME must be one of {', '.join(TEACHER_NAMES)}, got '{name}'")
    info_path = Path(run_teacher) / "teacher.json"
    if not info_path.is_file():
        raise UserError(f"{run_teacher}: not a finished teacher folder (teacher.json is missing)")
    info = json.loads(info_path.read_text())
    if cfg_scale is not None:
        info.setdefault("sampling", {})["cfg_scale"] = float(cfg_scale)
    model = FlowModel.from_pretrained(run_teacher, torch_dtype=torch.float32)
    Path(dest_root).mkdir(parents=True, exist_ok=True)
    dest = Path(dest_root) / name
    tmp = Path(dest_root) / f".{name}-tmp-{uuid.uuid4().hex[:8]}"
    model.to(torch.float16).save_pretrained(tmp)
    (tmp / "teacher.json").write_text(json.dumps(info, indent=1) + "\n")
    size_mb = sum(p.stat().st_size for p in tmp.rglob("*.safetensors")) / 1e6
    (tmp / "MODEL_CARD.md").write_text(model_card(name, info, model.num_params(), size_mb))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flashdistill.teacher.ship", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="a finished run's teacher folder, e.g. runs/teacher_base/teacher")
    parser.add_argument("name", choices=TEACHER_NAMES)
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale to record as the teacher's default")
    args = parser.parse_args(argv)
    try:
        dest = ship(Path(args.teacher), args.name, args.cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"shipped teacher:{args.name} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
