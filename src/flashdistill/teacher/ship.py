"""Ship a trained teacher inside the package: `flashdistill teacher ship RUN/teacher NAME [--cfg W]`.

Copies the teacher's weights into `flashdistill/assets/teachers/NAME/` stored as float16 (half the bytes; the
pipeline loads them back as float32, and every shipped figure is measured on the shipped file) - for a LoRA teacher
(`lora.rank > 0`) only its adapter, with its base renamed to the shipped `--base` (default teacher:base) - records the
chosen classifier-free guidance scale in teacher.json (`sampling.cfg_scale`, chosen on the val split with
`benchmarks/teacher_cfg.py`), and writes the model card `MODEL_CARD.md` from what the training run recorded: the
exact command, config and seed, parameter count, training time and hardware.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashdistill.errors import UserError
from flashdistill.files import swap_in
from flashdistill.models.folders import CONFIG_FILE, TRANSFORMER_FOLDER
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.shipped import TEACHER_NAMES, TEACHERS_DIR


def model_card(name: str, info: dict, num_params: int, size_mb: float, storage: str, note: str | None = None) -> str:
    cfg = info.get("config", {})
    train, model = cfg.get("train", {}), cfg.get("model", {})
    hw = info.get("hardware", {})
    mix = cfg.get("mix", {})
    return "\n".join([
        f"# teacher:{name}",
        "",
        f"A flow-matching teacher of the embedded world (T2I and editing in one network): diffusers' "
        f"`QwenImageTransformer2DModel`, preset `{model.get('preset')}`, {num_params:,} parameters, "
        f"{model.get('resolution')} px, pixel space. Weights: EMA (decay {info.get('ema_decay')}), "
        f"{size_mb:.1f} MB on disk. {storage}",
        "",
        "| | |", "|---|---|",
        f"| command | `{info.get('command')}` |",
        f"| seed | {train.get('seed')} |",
        f"| steps x batch | {info.get('steps')} x {train.get('batch_size')} |",
        f"| initialised from | {cfg.get('run', {}).get('init_from') or 'random (seeded)'} |",
        f"| T2I composition | {mix.get('composition')} |",
        f"| edit mix | {mix.get('edit_mix')} |",
        f"| T2I : Edit | {mix.get('t2i_weight')} : {mix.get('edit_weight')} |",
        "| final training loss"
        f"{' (flow matching + REPA term, which is negative)' if cfg.get('repa', {}).get('weight') else ''}"
        f" | {info.get('final_loss'):.4f} |" if info.get("final_loss") is not None else
        "| final training loss | n/a |",
        f"| training time | {info.get('wall_time_s', 0) / 60:.1f} min |",
        f"| hardware | {hw.get('cpus')} CPUs ({hw.get('machine')}), torch {hw.get('torch')}, "
        f"{hw.get('torch_threads')} threads |",
        f"| sampling | Euler, shift {info.get('sampling', {}).get('shift')}, CFG scale "
        f"{info.get('sampling', {}).get('cfg_scale')} (`--cfg` of the ship command; see the note for how it was "
        "chosen) |",
        f"| text encoder | {info.get('text_encoder')} |",
        "",
        *([note, ""] if note else []),
        "The full training config is in `teacher.json`. Benchmark results: `docs/results.md`.",
        "",
    ])


def _ship_lora(run_teacher: Path, tmp: Path, base: str) -> str:
    """Copy a LoRA teacher's adapter as float16, its base renamed to the shipped `base`; returns a card line."""
    from flashdistill.models.lora import WEIGHTS, resolve_base

    meta = json.loads((run_teacher / CONFIG_FILE).read_text())
    shipped_base = FlowModel.from_pretrained(resolve_base(base, run_teacher))
    if shipped_base.config != MMDiTConfig(**meta["config"]):
        raise UserError(f"--base {base} is a {shipped_base.config}, the adapter needs {meta['config']}")
    adapter = load_file(str(run_teacher / TRANSFORMER_FOLDER / WEIGHTS))
    (tmp / TRANSFORMER_FOLDER).mkdir(parents=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in adapter.items()},
              str(tmp / TRANSFORMER_FOLDER / WEIGHTS))
    meta["lora"] = {**meta["lora"], "base": base, "trained_on": meta["lora"]["base"]}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    lora, n = meta["lora"], sum(v.numel() for v in adapter.values())
    return (f"Stored as a LoRA adapter on `{base}` (peft via diffusers, rank {lora['rank']}, alpha {lora['alpha']:g}, "
            f"{n:,} adapter parameters, diffusers' `{WEIGHTS}`); it loads fused into the base's weights, as fast "
            f"as the base.")


def ship(run_teacher: Path, name: str, cfg_scale: float | None, dest_root: Path = TEACHERS_DIR,
         base: str = "teacher:base", note: str | None = None) -> Path:
    if name not in TEACHER_NAMES:
        raise UserError(f"NAME must be one of {', '.join(TEACHER_NAMES)}, got '{name}'")
    run_teacher = Path(run_teacher)
    info_path = run_teacher / "teacher.json"
    if not info_path.is_file():
        raise UserError(f"{run_teacher}: not a finished teacher folder (teacher.json is missing)")
    info = json.loads(info_path.read_text())
    if cfg_scale is not None:
        info.setdefault("sampling", {})["cfg_scale"] = float(cfg_scale)
    model = FlowModel.from_pretrained(run_teacher, torch_dtype=torch.float32)
    Path(dest_root).mkdir(parents=True, exist_ok=True)
    dest = Path(dest_root) / name
    tmp = Path(dest_root) / f".{name}-tmp-{uuid.uuid4().hex[:8]}"
    is_lora = json.loads((run_teacher / CONFIG_FILE).read_text()).get("model") == "mmdit-lora"
    if is_lora:
        storage = _ship_lora(run_teacher, tmp, base)
    else:
        model.to(torch.float16).save_pretrained(tmp)
        storage = "Stored as float16, loaded as float32."
    (tmp / "teacher.json").write_text(json.dumps(info, indent=1) + "\n")
    size_mb = sum(p.stat().st_size for p in tmp.rglob("*.safetensors")) / 1e6
    (tmp / "MODEL_CARD.md").write_text(model_card(name, info, model.num_params(), size_mb, storage, note))
    return swap_in(tmp, dest)
