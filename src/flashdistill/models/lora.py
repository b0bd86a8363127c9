"""LoRA on the MMDiT through peft, the way diffusers does it: a teacher fine-tuned as a low-rank adapter on a base.

A specialized teacher (paper §4) is a base teacher fine-tuned towards a task. Trained as a LoRA it is stored as the
adapter alone (a few MB, diffusers' own LoRA file) plus the name of its base, and it loads as a plain `FlowModel`:
the base, the adapter loaded on it, fused into the weights and unloaded, so it runs exactly as fast as the base.

- `add_lora(model, rank, alpha, targets, base)`: inject peft LoRA layers (diffusers' `add_adapter`) into
  `model.transformer` and freeze everything else; the LoRA B matrices start at zero, so the model starts as its base.
- `save_lora(model, folder)`: `folder/transformer/pytorch_lora_weights.safetensors` (diffusers'
  `save_lora_adapter`; `QwenImageTransformer2DModel.load_lora_adapter` reads it) + `flashdistill_model.json`
  with `"model": "mmdit-lora"`, the base and the LoRA settings.
- `lora_base_spec(folder, meta)`, `resolve_base(spec, folder)`, `fuse_adapter(transformer, folder)`: what
  `FlowModel.from_pretrained` (models/mmdit.py) uses to load such a folder fused into its base; an adapter holding
  NaN or Inf is refused, naming the file (models/lora_check.py).

Below models/mmdit.py: this module never builds a FlowModel, it is handed one.

The base is named as anywhere else a model is: `teacher:NAME` (shipped) or a folder (a relative folder is looked
up from the working directory, then beside the adapter folder).
"""

from __future__ import annotations

import json
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.models.folders import CONFIG_FILE, TRANSFORMER_FOLDER
from flashdistill.models.lora_check import check_finite
from flashdistill.models.shipped import teacher_folder

# The attention projections and MLPs of both streams: the usual LoRA targets of diffusers' Qwen-Image trainers.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                   "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2")
WEIGHTS = "pytorch_lora_weights.safetensors"


def matches_target(name: str, targets) -> bool:
    """Whether module `name` is one of `targets` as peft's target_modules match it: the name or its last parts."""
    return any(name == t or name.endswith("." + t) for t in targets)


def add_lora(model, rank: int, alpha: float | None, targets: list[str] | tuple[str, ...] | None, base: str):
    """Turn `model` (a FlowModel holding the base weights) into a LoRA model; returns its trainable parameters."""
    from peft import LoraConfig

    targets = list(targets or DEFAULT_TARGETS)
    model.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=True)
    model.transformer.add_adapter(config)  # marks only the LoRA parameters trainable
    model.lora = {"base": str(base), "rank": int(rank), "alpha": float(alpha or rank), "targets": targets}
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError(f"lora.targets {targets} match no layer of the model")
    return params


def save_lora(model, folder: Path) -> None:
    """The adapter (diffusers' LoRA file) and our metadata; the base weights are not written."""
    from dataclasses import asdict

    folder = Path(folder)
    model.transformer.save_lora_adapter(folder / TRANSFORMER_FOLDER, weight_name=WEIGHTS)
    meta = {"format": 1, "model": "mmdit-lora", "config": asdict(model.config), "lora": model.lora}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def resolve_base(spec: str, folder: Path) -> Path:
    if not spec.startswith("teacher:") and not Path(spec).is_dir() and (folder / spec).is_dir():
        spec = str(folder / spec)
    try:
        return teacher_folder(spec)
    except UserError as err:
        raise UserError(f"{folder}: the base of this LoRA teacher is unavailable: {err}") from None


def lora_base_spec(folder: Path, meta: dict) -> str:
    """The base a LoRA folder's `flashdistill_model.json` (`meta`) names; UserError when it names none."""
    lora = meta.get("lora")
    if not isinstance(lora, dict) or not isinstance(lora.get("base"), str):
        raise UserError(f"{folder / CONFIG_FILE}: 'lora' must be an object naming its 'base'")
    return lora["base"]


def fuse_adapter(transformer, folder: Path) -> None:
    """The adapter of the LoRA folder `folder` loaded onto its base's `transformer`, fused and unloaded."""
    adapter = folder / TRANSFORMER_FOLDER / WEIGHTS
    if not adapter.is_file():
        raise UserError(f"{folder}: {adapter.name} is missing")
    check_finite(adapter, str(adapter))  # a NaN adapter loads fine and makes every output NaN
    try:
        transformer.load_lora_adapter(str(adapter.parent), prefix=None, weight_name=WEIGHTS, use_safetensors=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:  # damaged or foreign adapter file
        reason = " ".join(str(err.__cause__ or err).split())[:200]
        raise UserError(f"{adapter}: the LoRA adapter does not load: {reason}") from None
    transformer.fuse_lora()
    transformer.unload_lora()


def is_lora(model) -> bool:
    return getattr(model, "lora", None) is not None
