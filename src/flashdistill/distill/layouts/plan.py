"""Memory planner: bytes per rank of every DMD role, per role layout, counted from real parameter shapes.

`flashdistill plan SPEC [--world-size N]` builds the teacher's `QwenImageTransformer2DModel` from its config on the
meta device (no weights are read or allocated, so the 20B Qwen-Image config plans in a second) and counts:

- P, the transformer's parameters, and A, the parameters of LoRA rank r on the usual targets (models/lora.py's
  DEFAULT_TARGETS, matched as peft matches them: a Linear whose name ends in the target): r·(in + out) each.
- Precision, as in the open Qwen-Image DMD trainers: frozen weights bf16 (2 B/param); a trainable parameter keeps
  an fp32 master (4), an fp32 gradient (4) and AdamW's two fp32 moments (8); the EMA is an fp32 copy (4) of what the
  student trains. Every such state is sharded evenly over the world size N (FSDP2 FULL_SHARD: bytes / N).
- Transient, not sharded: FSDP's all-gathered bf16 parameters of the current and the prefetched block
  (2 · 2 B · the largest block).

Layouts (`roles.mode`, issue 13):
- `full`: every teacher a frozen copy, student and critic full trainable copies, EMA of the student.
- `lora`: one frozen base; student and critic are adapters of rank r on it; a specialized teacher is a LoRA (rank r)
  on the same base; EMA of the student adapter only.
- `lora, critic.lora false`: the same with a full-parameter critic.

Activations (an estimate, stated as a formula; not measured): a grad pass through one dual-stream block saves
about c = 17 D-wide bf16 tensors per token (modulated input 1, q/k/v 3, q/k norms 2, attention output 1, residual 1,
second modulated input 1, MLP hidden 4 before and 4 after the activation); attention scores are not stored (SDPA
keeps O(S) per head). With S = image tokens (+ source tokens for edits) + text tokens and micro-batch B:

    per block  = 2 B · c · D · B · S
    no checkpointing:      L · per block
    per-block checkpoints: L · 2 B · D · B · S (each block's input) + one block recomputed (per block)

Only one grad pass holds activations at a time (the student's step k, or a critic update); teacher and no-grad passes
hold about one block. Tests: `pytest tests/test_plan.py` (counts equal the instantiated tiny model's numel).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flashdistill.errors import UserError
from flashdistill.models.lora import DEFAULT_TARGETS, matches_target

ASSETS = Path(__file__).resolve().parents[2] / "assets"
SHIPPED = {"qwen-image": ASSETS / "qwen-image" / "transformer" / "config.json"}
GIB = 1024**3
C_ACT = 17  # D-wide tensors saved per token per block in a grad pass (see the module docstring)
MODES = ("full", "lora", "lora, critic.lora false")


def transformer_config_path(spec: str) -> Path:
    """The transformer config.json of SPEC: `qwen-image` (shipped, 20B), a pipeline folder, a transformer folder,
    a flashdistill model folder, `teacher:NAME`, or a config.json file."""
    if spec in SHIPPED and not Path(spec).exists():
        return SHIPPED[spec]
    if spec.startswith("teacher:"):
        from flashdistill.models.shipped import teacher_folder

        spec = str(teacher_folder(spec))
    path = Path(spec)
    for candidate in (path, path / "config.json", path / "transformer" / "config.json"):
        if candidate.is_file() and candidate.suffix == ".json":
            return candidate
    raise UserError(f"{spec}: no transformer config here (looked for {path}/transformer/config.json and "
                    f"{path}/config.json); name a pipeline folder, a config.json, or qwen-image")


# Sizes the transformer's config must give as positive integers (None: diffusers' default, out_channels only).
CONFIG_INTS = ("num_layers", "attention_head_dim", "num_attention_heads", "joint_attention_dim", "in_channels",
               "out_channels", "patch_size")
# Building a block on the meta device costs milliseconds, and more per block the more there are (~4 s for 600):
# the bound keeps `plan` quick and is ~8x Qwen-Image's 60 blocks.
MAX_LAYERS = 512


def check_transformer_config(config, path: Path) -> dict:
    """`config` (a config.json's content) as QwenImageTransformer2DModel takes it, or UserError naming the key."""
    if not isinstance(config, dict):
        raise UserError(f"{path}: must hold a JSON object (a transformer config), got a {type(config).__name__}")
    name = config.get("_class_name", "QwenImageTransformer2DModel")
    if name != "QwenImageTransformer2DModel":
        raise UserError(f"{path}: _class_name {name!r}: only QwenImageTransformer2DModel")
    for key in CONFIG_INTS:
        value = config.get(key)
        if key not in config or (value is None and key == "out_channels"):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{path}: {key} must be a positive integer, got {value!r}")
    layers = config.get("num_layers", 0)
    if layers > MAX_LAYERS:
        raise UserError(f"{path}: num_layers {layers} is more than {MAX_LAYERS} (Qwen-Image has 60); check the "
                        f"config")
    return config


def meta_transformer(config_path: Path):
    """The transformer of `config_path` built on the meta device (shapes, no memory), its config checked first."""
    from diffusers import QwenImageTransformer2DModel

    from flashdistill.files import read_json

    config = check_transformer_config(read_json(config_path, "transformer config"), Path(config_path))
    try:
        with torch.device("meta"):
            return QwenImageTransformer2DModel.from_config(config)
    except (TypeError, ValueError, ZeroDivisionError, AssertionError, RuntimeError) as err:
        # diffusers checks no value itself: what it cannot build from is named here, not as its traceback
        raise UserError(f"{config_path}: QwenImageTransformer2DModel cannot be built from this config "
                        f"({type(err).__name__}: {err})") from None


@dataclass
class Counts:
    params: int  # P
    lora_params: int  # A at rank r
    largest_block: int  # parameters of the largest transformer block
    layers: int
    width: int  # D = heads x head dim
    targets: tuple[str, ...] = DEFAULT_TARGETS  # the module-name suffixes A counts (roles.lora_targets)


def lora_params(model: torch.nn.Module, rank: int, targets=DEFAULT_TARGETS) -> int:
    """r·(in + out) for every Linear a peft LoraConfig(target_modules=targets) would wrap."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and matches_target(name, targets):
            total += rank * (module.in_features + module.out_features)
    return total


def count(model, rank: int, targets=DEFAULT_TARGETS) -> Counts:
    blocks = model.transformer_blocks
    cfg = model.config
    return Counts(params=sum(p.numel() for p in model.parameters()), lora_params=lora_params(model, rank, targets),
                  targets=tuple(targets),
                  largest_block=max(sum(p.numel() for p in b.parameters()) for b in blocks),
                  layers=len(blocks), width=cfg.num_attention_heads * cfg.attention_head_dim)


@dataclass
class Row:
    role: str
    params: int
    weights: float  # bytes per rank
    grads: float = 0.0
    optimizer: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


def dtype_name(nbytes: int) -> str:
    """How the tables name a parameter's bytes: 2 is bf16, 4 fp32."""
    return {2: "bf16", 4: "fp32"}.get(nbytes, f"{nbytes} B")


def _trainable(role: str, n: int, world: int, nbytes: int = 4) -> Row:
    """A trainable role: weights, gradients and AdamW's two moments in `nbytes` each (fp32: 4)."""
    return Row(role, n, nbytes * n / world, nbytes * n / world, 2 * nbytes * n / world)


def role_rows(c: Counts, mode: str, world: int, teachers: int, frozen_bytes: int = 2, trainable_bytes: int = 4
              ) -> list[Row]:
    """Bytes per rank of every role under `mode` (teachers: how many distinct teachers, the base included);
    frozen weights in `frozen_bytes` per parameter (bf16: 2), trainable state and the EMA in `trainable_bytes`."""
    P, A, fb, tb = c.params, c.lora_params, frozen_bytes, trainable_bytes
    frozen, ema = dtype_name(fb), dtype_name(tb)
    if mode == "full":
        rows = [Row(f"teacher {i + 1} (frozen, {frozen})", P, fb * P / world) for i in range(teachers)]
        rows += [_trainable("student (full)", P, world, tb), _trainable("critic (full)", P, world, tb),
                 Row(f"EMA of the student ({ema})", P, tb * P / world)]
    elif mode in MODES[1:]:
        rows = [Row(f"base (frozen, {frozen}; the base teacher = adapters off)", P, fb * P / world)]
        rows += [Row(f"teacher {i + 2}: LoRA on the base ({frozen})", A, fb * A / world)
                 for i in range(teachers - 1)]
        rows.append(_trainable("student adapter", A, world, tb))
        rows.append(_trainable("critic adapter", A, world, tb) if mode == "lora"
                    else _trainable("critic (full)", P, world, tb))
        rows.append(Row(f"EMA of the student adapter ({ema})", A, tb * A / world))
    else:
        raise ValueError(f"unknown mode {mode!r}")
    rows.append(Row("FSDP gather buffer (2 blocks bf16, unsharded)", 2 * c.largest_block, 2 * 2 * c.largest_block))
    return rows


def activation_bytes(c: Counts, batch: int, tokens: int, checkpointing: bool) -> float:
    """The estimate of the module docstring for one grad pass: S = `tokens`, micro-batch `batch`."""
    per_block = 2 * C_ACT * c.width * batch * tokens
    if not checkpointing:
        return c.layers * per_block
    return c.layers * 2 * c.width * batch * tokens + per_block


def gib(x: float) -> str:
    return f"{x / GIB:,.2f}"


def render(spec: str, c: Counts, world: int, rank: int, teachers: int, frozen_bytes: int = 2) -> str:
    """The plan's role tables as Markdown: one table per mode (layouts/peak.py adds the peak per GPU)."""
    frozen = dtype_name(frozen_bytes)
    lines = [f"# Memory plan: {spec}", "",
             f"Transformer: {c.params:,} parameters ({c.params / 1e9:.2f} B), {c.layers} blocks, width {c.width}; "
             f"LoRA rank {rank} on {len(c.targets)} targets: {c.lora_params:,} parameters. "
             f"World size {world}; {teachers} teacher(s). GiB per rank; frozen {frozen}, trainable fp32 master + "
             f"fp32 grad + AdamW 2x fp32, EMA fp32, sharded / {world}.", ""]
    for mode in MODES:
        rows = role_rows(c, mode, world, teachers, frozen_bytes)
        lines += [f"## roles.mode: {mode}", "", "| role | params | weights | grads | AdamW | total |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r.role} | {r.params:,} | {gib(r.weights)} | {gib(r.grads)} | {gib(r.optimizer)} | "
                  f"{gib(r.total)} |" for r in rows]
        lines += [f"| **total** | | | | | **{gib(sum(r.total for r in rows))}** |", ""]
    return "\n".join(lines)


def plan_spec(spec: str, overrides: list[str] | None = None, recipe=None) -> tuple[Path, int]:
    """(transformer config path, number of distinct teachers) from a recipe YAML (or its loaded `recipe`) or a
    model spec."""
    if spec.endswith((".yaml", ".yml")):
        from flashdistill.distill.recipe import load_recipe

        recipe = recipe or load_recipe(spec, overrides)
        base = recipe.teachers[recipe.student.init_from]
        return transformer_config_path(base), len(set(recipe.teachers.values()))
    if overrides:
        raise UserError(f"--set {overrides[0]}: overrides apply to a recipe (.yaml); {spec} is a model spec")
    return transformer_config_path(spec), 1
