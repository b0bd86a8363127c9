"""`roles.mode: lora` (prototype): one frozen base transformer shared by every role.

- The base teacher is the base with adapters off; the student and the critic are two peft adapters of rank
  `roles.lora_rank` on it (LoRA B starts at zero, so both start as the base, as DMD2 initialises them); the EMA is
  a third adapter that follows the student adapter only; a specialized teacher saved as a LoRA on the same base
  (models/lora.py's `mmdit-lora` folders, or a diffusers LoRA file on a Qwen-Image folder; the family in
  distill/families.py says which) is a frozen fourth adapter. `critic.lora: false` makes the critic a full
  copy of the base instead. Any other teacher stays its own frozen model.
- Precision: the base and the teacher adapters in `roles.frozen_dtype` (bf16 on CUDA by default); the student,
  critic and EMA adapters (or the full critic) in fp32, so AdamW's moments and the gradients are fp32 too (what
  diffusers' LoRA training scripts do with `cast_training_params`).
- Each role is an `AdapterView`: `view(z_t, t, cond)` switches the shared transformer to its adapter (or off) and
  runs it, so the engine keeps calling `v = model(z_t, t, cond)` and never knows the layout. A view's
  `parameters()` / `state_dict()` are its adapter's only, so optimizers, EMA, clipping and checkpoints see exactly
  the trainable state; the names drop the adapter name, so the student's and the EMA's state dicts align.
- peft freezes an adapter when another is activated; the view re-enables the trainable adapters (student, critic)
  after every switch, so a graph built under one adapter still back-propagates into it while another runs.
- Per-block checkpointing recomputes a block in backward, when another role may hold the shared base: each block
  records the adapter its forward ran under and recomputes under that one (`checkpoint_block`).
- Export: the EMA adapter as diffusers' LoRA file plus the base's name (`FlowModel.from_pretrained` fuses it).

Under torchrun this layout needs `run.parallel: fsdp` (the base with its adapters sharded as one module); a student
loads from the run's exports, not from a bare checkpoint. Tests: `pytest tests/test_lora_roles.py`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.utils.checkpoint import checkpoint

from flashdistill.distill.families import Family
from flashdistill.distill.layouts import fsdp
from flashdistill.distill.layouts.base import Roles, adamw_roles, frozen_dtype, trainable_copy
from flashdistill.errors import UserError
from flashdistill.models.folders import CONFIG_FILE, TRANSFORMER_FOLDER
from flashdistill.models.lora import WEIGHTS, matches_target
from flashdistill.models.mmdit import FlowModel

TRAINABLE = ("student", "critic")


def _adapter_params(base: FlowModel, adapter: str) -> list[tuple[str, nn.Parameter]]:
    """(name without the adapter, parameter) of one adapter, in module order."""
    out = []
    for name, p in base.transformer.named_parameters():
        parts = name.split(".")
        if adapter in parts and any(x.startswith("lora_") for x in parts):
            out.append((".".join(x for x in parts if x != adapter), p))
    return out


def activate(base: FlowModel, adapter: str | None) -> None:
    """Switch the shared transformer to `adapter` (None: adapters off), keeping the trainable adapters trainable and
    the others frozen (peft's set_adapter marks the adapter it activates trainable, a teacher's or the EMA's too:
    besides being wrong, that would give a compiled block a new variant per switch, models/compiled.py)."""
    tr = base.transformer
    if adapter is None:
        tr.disable_adapters()
    else:
        tr.enable_adapters()
        tr.set_adapter(adapter)
    for name, params in base.adapter_params.items() if hasattr(base, "adapter_params") else ():
        for _, p in params:
            if p.requires_grad != (name in TRAINABLE):
                p.requires_grad_(name in TRAINABLE)


def checkpoint_block(block: nn.Module, *args):
    """diffusers' per-block gradient checkpointing (`enable_gradient_checkpointing(gradient_checkpointing_func=)`),
    recomputing `block` in backward under the adapters its forward ran under. Between a role's forward and the
    backward the other roles switch the shared base (the teachers, the critic); recomputed under theirs, a block
    would save other tensors (a CheckpointError) or, under an adapter of the same shape, silently give another
    gradient. Only the block's own LoRA layers are switched, and back after, by the two attributes peft's
    `set_adapter` / `enable_adapters` set, so no parameter's requires_grad changes inside backward."""
    layers = [m for m in block.modules() if isinstance(m, BaseTunerLayer)]
    ran_under = [(m._active_adapter, m._disable_adapters) for m in layers]

    def run(*inputs):
        now = [(m._active_adapter, m._disable_adapters) for m in layers]
        _set_layers(layers, ran_under)
        try:
            return block(*inputs)
        finally:
            _set_layers(layers, now)

    return checkpoint(run, *args, use_reentrant=False)


def _set_layers(layers: list[BaseTunerLayer], states: list[tuple]) -> None:
    for m, (active, disabled) in zip(layers, states):
        m._active_adapter, m._disable_adapters = active, disabled


class AdapterView(nn.Module):
    """One role on the shared base: `adapter` None is the base itself (adapters off)."""

    def __init__(self, base: FlowModel, adapter: str | None):
        super().__init__()
        object.__setattr__(self, "base", base)  # not a submodule: this view owns only its adapter's parameters
        self.adapter = adapter
        self.config = base.config
        self._params = [] if adapter is None else base.adapter_params[adapter]

    def forward(self, z_t, t, cond, **kwargs):
        activate(self.base, self.adapter)
        return self.base(z_t, t, cond, **kwargs)

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
                         ) -> Iterator[tuple[str, nn.Parameter]]:
        yield from ((prefix + name, p) for name, p in self._params)

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self._params}

    def load_state_dict(self, state: dict, strict: bool = True, assign: bool = False):
        mine = dict(self._params)
        if set(state) != set(mine):
            raise UserError(f"the checkpoint's {self.adapter} adapter does not match this recipe's "
                            f"(roles.lora_rank or the targets differ)")
        with torch.no_grad():
            for name, p in mine.items():
                p.copy_(state[name])
        return None

    def save_pretrained(self, folder: str | Path) -> None:
        """This adapter as diffusers' LoRA file + `flashdistill_model.json` naming the base (models/lora.py)."""
        folder = Path(folder)
        self.base.transformer.save_lora_adapter(folder / TRANSFORMER_FOLDER, adapter_name=self.adapter,
                                                weight_name=WEIGHTS)
        meta = {"format": 1, "model": "mmdit-lora", "config": asdict(self.config), "lora": self.base.lora_spec}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    def unsharded(self, state: dict, recipe, family: Family, path: Path) -> AdapterView:
        """This view on a plain base built from `path` with every adapter, holding `state`: the full state of the
        sharded base, gathered on rank 0 for export (layouts/fsdp.py `gather_ema`)."""
        names = ["student", "ema"] + (["critic"] if recipe.critic.lora else [])
        model = fsdp.plain(family, path, state, lambda m: add_adapters(m, recipe, family, path, names))
        model.adapter_params = {self.adapter: _adapter_params(model, self.adapter)}
        return AdapterView(model.eval(), self.adapter)


def build_lora_roles(recipe, dist, family: Family) -> Roles:
    """The roles of `roles.mode: lora` (see the module docstring); `family` (distill/families.py) resolves and
    loads the teachers and says which one is a LoRA on the base. Under `run.parallel: fsdp` the base, with every
    adapter already added, is sharded as one module (layouts/fsdp.py): rank 0 reads it, the others build it on
    the meta device and receive their shards."""
    sharding = fsdp.sharding(recipe, dist)
    sharded = sharding is not None
    base_path = _base_path(recipe, dist, family, sharded)
    layout = recipe.roles

    def full_critic(model):
        model.train().requires_grad_(True)
        if layout.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()

    dtype = frozen_dtype(layout.frozen_dtype, dist.device)
    critic_full = None
    if not recipe.critic.lora and sharded:  # trainable: fp32 master weights
        critic_full = fsdp.load(family, base_path, sharding, full_critic, torch.float32)
    if sharded and not dist.main:
        base = family.structure(base_path, dtype)
    else:
        base = family.load_model(base_path, dtype).to(fsdp.load_device(sharding) if sharded else dist.device)
    base.eval().requires_grad_(False)
    if layout.gradient_checkpointing:
        base.transformer.enable_gradient_checkpointing(checkpoint_block)
    if not recipe.critic.lora and not sharded:
        critic_full = trainable_copy(base)
        full_critic(critic_full)
    names = ["student", "ema"] + (["critic"] if recipe.critic.lora else [])
    teachers = add_adapters(base, recipe, family, base_path, names)
    if sharded:
        _refuse_root_adapters(base)
        _shard_base(base, sharding)
    for name, path in list(teachers.items()):  # a different model: its own frozen copy, as in roles.mode full
        if isinstance(path, Path):
            teachers[name] = (fsdp.load(family, path, sharding, lambda m: m.requires_grad_(False), dtype)
                              if sharded else family.load_model(path, dtype).to(dist.device).requires_grad_(False)
                              ).eval()
    if not sharded:  # sharded: fully_shard placed the shards (on the device, or on the host under offload)
        base.to(dist.device)
    adapters = names + [a for a in teachers.values() if isinstance(a, str)]
    base.adapter_params = {a: _adapter_params(base, a) for a in adapters}
    if recipe.dmd.bf16:
        keep_activations_bf16(base)
    for adapter, params in base.adapter_params.items():
        for _, p in params:
            p.requires_grad_(adapter in TRAINABLE)
    teachers = {name: a if isinstance(a, FlowModel) else AdapterView(base, a) for name, a in teachers.items()}
    student, ema = AdapterView(base, "student"), AdapterView(base, "ema")
    ema.load_state_dict(student.state_dict())  # same names in the same order: ema_update pairs them by position
    critic = AdapterView(base, "critic") if critic_full is None else critic_full
    return adamw_roles(teachers, student, ema, critic, recipe.dmd, recipe.critic, family)


def _base_path(recipe, dist, family: Family, sharded: bool) -> Path:
    """The shared base of `roles.mode: lora` (the student's teacher), refused where this layout cannot hold it."""
    if dist.world > 1 and not sharded:
        raise UserError("roles.mode: lora under torchrun needs run.parallel: fsdp (DDP holds only roles.mode full)")
    base_name = recipe.student.init_from
    if recipe.critic.init_from != base_name:
        raise UserError(f"critic.init_from: with roles.mode lora the critic starts from the student's base "
                        f"{base_name!r}")
    base_path = family.resolve(recipe.teachers[base_name], f"teachers.{base_name}").resolve()
    if family.is_lora(base_path):
        raise UserError(f"teachers.{base_name}: the base of roles.mode lora must be a full model, not a LoRA")
    return base_path


def _refuse_root_adapters(base: FlowModel) -> None:
    """Under fsdp, adapters live in the transformer blocks only: on a root module (proj_out, norm_out.linear,
    img_in, ...) the sharded run's losses drift from the unsharded run's (measured by tests/test_fsdp.py), so such
    targets are refused rather than trained wrongly."""
    outside = sorted({name.split(".lora_")[0] for name, _ in base.transformer.named_parameters()
                      if ".lora_" in name and not name.startswith("transformer_blocks.")})
    if outside:
        raise UserError(f"roles.lora_targets: {', '.join(outside)} lie outside the transformer blocks; under "
                        f"run.parallel fsdp adapters go on block modules only (drop them, or run unsharded)")


def _check_targets(base: FlowModel, targets: list[str]) -> None:
    """Every target names a Linear of the transformer, matched as peft matches it (the name or its last parts):
    peft itself skips a target that matches nothing when another one matches, so a typo would train nothing there."""
    names = [n for n, m in base.transformer.named_modules() if isinstance(m, nn.Linear)]
    unmatched = [t for t in targets if not any(matches_target(n, [t]) for n in names)]
    if unmatched:
        raise UserError(f"roles.lora_targets: {', '.join(unmatched)} match no linear layer of the transformer "
                        f"(names end like {', '.join(sorted({n.split('.', 2)[-1] for n in names})[:6])}, ...)")


def _shard_base(base: FlowModel, sharding: fsdp.Sharding) -> None:
    """The base with its adapters sharded as one module: rank 0's weights broadcast into every rank's shards."""
    full = dict(base.state_dict()) if sharding.dist.main else None
    fsdp.shard(base, sharding)
    if not sharding.dist.main:
        fsdp.materialize(base, sharding)
    fsdp.broadcast_from_rank0(base, full)
    del full


def keep_activations_bf16(base: FlowModel) -> None:
    """Under bf16 autocast, let the LoRA branches take the bf16 activations as they are. peft casts each LoRA
    layer's input to its adapter's dtype (fp32 here), which autocast then casts back to bf16 for the matmul: a copy
    of every LoRA layer's input, for a result rounded to bf16 anyway (dtype copies were 21 % of the GPU time in the
    profile of a full-size iteration, benchmarks/results/gpu_fullsize_h200_before_bf16_lora.json)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in base.transformer.modules():
        if isinstance(module, BaseTunerLayer):
            module.cast_input_dtype_enabled = False


def add_adapters(base: FlowModel, recipe, family: Family, base_path: Path, names: list[str]) -> dict:
    """Add the trainable adapters `names` (seeded) and every teacher stored as a LoRA on the base to `base`;
    returns teacher name -> None (the base), an adapter name, or the Path of a different model."""
    from peft import LoraConfig

    layout = recipe.roles
    alpha = layout.lora_alpha or layout.lora_rank
    base.lora_spec = {"base": recipe.teachers[recipe.student.init_from], "rank": layout.lora_rank,
                      "alpha": float(alpha), "targets": layout.targets()}
    _check_targets(base, layout.targets())
    config = LoraConfig(r=layout.lora_rank, lora_alpha=alpha, target_modules=layout.targets(),
                        init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.dmd.seed)
        for name in names:
            base.transformer.add_adapter(copy.deepcopy(config), adapter_name=name)
    with torch.no_grad():  # peft gives an adapter the base layer's dtype: trainable adapters and the EMA stay fp32
        for name in names:
            for _, p in _adapter_params(base, name):
                p.data = p.data.to(torch.float32)
    teachers: dict[str, object] = {}
    for i, (name, spec) in enumerate(recipe.teachers.items()):
        path = family.resolve(spec, f"teachers.{name}").resolve()
        adapter = None if path == base_path else family.lora_adapter(path, base_path)
        if path == base_path:
            teachers[name] = None
        elif adapter:
            teachers[name] = f"teacher{i}"
            folder, weight_name, prefix = adapter
            base.transformer.load_lora_adapter(str(folder), prefix=prefix, weight_name=weight_name,
                                               adapter_name=teachers[name])
        else:
            teachers[name] = path
    return teachers
