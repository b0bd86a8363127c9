"""`run.parallel: fsdp`: every role sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`) under torchrun.

- Sharding: `fully_shard` on each transformer block (`transformer.transformer_blocks`), then on the role's root
  module, for teachers, student, critic and EMA alike (ZeRO-3: parameters resharded after each forward). On CUDA
  with `dmd.bf16` a `MixedPrecisionPolicy` computes in bf16 over fp32 shards and reduces gradients in fp32;
  `run.fsdp_offload` keeps the shards on the host (`CPUOffloadPolicy`, pinned on CUDA), where rank 0 also reads the
  model before sharding it (`load_device`: the GPU never holds a full model). Works on one rank too
  (`torchrun --nproc_per_node=1`, `active`). Per-block activation checkpointing is
  `roles.gradient_checkpointing` (diffusers' own, inside each block), set before sharding.
- Loading without a full copy per rank: every rank builds the role's structure on the meta device
  (`family.structure(path)`, no weights); rank 0 alone reads the weights (`family.load_model`: a folder, or a LoRA
  teacher fused into the base), and `set_model_state_dict(..., broadcast_from_rank0=True)` sends them tensor by
  tensor, each rank keeping only its shard. A node therefore holds one full model (rank 0's, dropped after the
  broadcast) plus the shards, not one model per rank. Student, critic and EMA start as shard-by-shard copies of
  the teacher they are initialised from (`clone`), so the folder is read once per distinct teacher.
- `roles.mode: lora`: the adapters are added to the shared base (and the critic copy made) before sharding, then
  the base is sharded as one role (layouts/lora.py).
- Gathering for export: `full_state` gives the unsharded state dict on rank 0 (host memory), which `plain` loads
  into a structure built on rank 0 (assign, so no second copy is made).

The data path is the one DDP uses (each rank takes its contiguous rows of the same global batch, layouts/full.py),
so N ranks follow one rank at the same global batch; checkpoints are sharded (runtime/sharded.py). Tests:
`pytest tests/test_fsdp.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flashdistill.runtime.dist import Dist


def active(parallel: str, dist: Dist) -> bool:
    """Whether the roles are sharded: `run.parallel: fsdp` (`parallel`) under torchrun (a process group, one rank
    included: `--nproc_per_node=1` runs FSDP2 and its offload on one GPU); a plain process holds plain modules."""
    return parallel == "fsdp" and bool(dist.world > 1 or dist.group)


@dataclass(frozen=True)
class Sharding:
    """What sharding needs to know: the ranks, bf16 compute over fp32 shards on CUDA (`dmd.bf16`), and whether the
    shards live in host memory (`run.fsdp_offload`)."""

    dist: Dist
    bf16: bool = False
    offload: bool = False


def sharding(recipe, dist: Dist) -> Sharding | None:
    """The recipe's Sharding on these ranks, or None when the roles are not sharded (`active`)."""
    if not active(recipe.run.parallel, dist):
        return None
    return Sharding(dist, recipe.dmd.bf16, recipe.run.fsdp_offload)


def _mesh(dist):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(dist.device.type, (dist.world,))


def _policies(s: Sharding) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kwargs = {}
    if s.dist.device.type == "cuda" and s.bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if s.offload:  # pinned host memory for fast copies to a GPU (a CPU-only torch cannot pin)
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=s.dist.device.type == "cuda")
    return kwargs


def shard(model: nn.Module, s: Sharding) -> nn.Module:
    """`fully_shard` each transformer block, then the root (in place; returns `model`)."""
    from torch.distributed.fsdp import fully_shard

    mesh, kwargs = _mesh(s.dist), _policies(s)
    for block in model.transformer.transformer_blocks:
        fully_shard(block, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)
    model.any_rank = s.dist.any  # every rank makes the same transformer calls (FlowModel._same_calls)
    return model


def fix_meta_rope(model: nn.Module) -> None:
    """diffusers' rotary embedding keeps its frequency tables as plain attributes, not buffers: built under the
    meta device they stay meta after `to_empty`, so rebuild that small module on the host."""
    transformer = getattr(model, "transformer", model)  # a FlowModel or the diffusers transformer itself
    pe = transformer.pos_embed
    if getattr(pe, "pos_freqs", None) is not None and pe.pos_freqs.is_meta:
        with torch.device("cpu"):
            transformer.pos_embed = type(pe)(theta=pe.theta, axes_dim=pe.axes_dim, scale_rope=pe.scale_rope)


def materialize(model: nn.Module, s: Sharding) -> None:
    """Allocate the (sharded) storage of a meta-built model where its shards live (`load_device`: FSDP2 wants
    offloaded shards materialized on the host); the values are set by the caller."""
    model.to_empty(device=load_device(s))
    fix_meta_rope(model)


def broadcast_from_rank0(model: nn.Module, full: dict | None) -> None:
    """Rank 0's full state dict `full` into the shards of every rank (others pass None)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full or {}, options=options)


def load_device(s: Sharding) -> torch.device:
    """Where rank 0 holds a model it read, before sharding: the host under `run.fsdp_offload` (so a GPU smaller than
    the model still loads it: fully_shard moves one block at a time to the GPU to shard it, and offloads the shard),
    else this rank's device."""
    return torch.device("cpu") if s.offload else s.dist.device


def load(family, path, s: Sharding, prepare=None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model at `path` in `dtype`, sharded, its weights read on rank 0 only. `prepare(model)` runs on every rank
    before sharding (freeze or unfreeze, add adapters): it must build the same structure on the meta device and on
    rank 0."""
    main = s.dist.main
    model = family.load_model(path, dtype).to(load_device(s)) if main else family.structure(path, dtype)
    if prepare is not None:
        prepare(model)
    full = dict(model.state_dict()) if main else None  # the unsharded tensors, alive until broadcast
    shard(model, s)
    if not main:
        materialize(model, s)
    broadcast_from_rank0(model, full)
    del full
    return model


def clone(source: nn.Module, family, path, s: Sharding, prepare=None) -> nn.Module:
    """A sharded copy of the sharded `source` (same structure, built from `path`'s config): local shards copied."""
    model = family.structure(path)
    if prepare is not None:
        prepare(model)
    shard(model, s)
    materialize(model, s)
    copy_shards(source, model)
    return model


@torch.no_grad()
def copy_shards(source: nn.Module, target: nn.Module) -> None:
    """target ← source, parameter by parameter and buffer by buffer, on the local shards (same sharding)."""
    src = dict(source.named_parameters()) | dict(source.named_buffers())
    for name, t in list(target.named_parameters()) + list(target.named_buffers()):
        _local(t).copy_(_local(src[name]))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def full_state(module: nn.Module) -> dict:
    """The unsharded state dict of a sharded module on rank 0, in host memory ({} on other ranks). Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def plain(family, path, state: dict, prepare=None) -> nn.Module:
    """An unsharded model with the structure at `path` (after `prepare`) holding `state` (rank 0, for export)."""
    model = family.structure(path)
    if prepare is not None:
        prepare(model)
    model.load_state_dict(state, assign=True)
    fix_meta_rope(model)
    return model


def gather_ema(roles, recipe, dist: Dist):
    """The EMA student unsharded on rank 0, as the export expects it (`.ema`); None on the other ranks. Collective.
    roles.mode full: a plain FlowModel; lora: a plain base with the adapters, seen through its "ema" adapter (the
    view rebuilds itself: `AdapterView.unsharded`)."""
    from types import SimpleNamespace

    family = roles.family
    path = family.resolve(recipe.teachers[recipe.student.init_from], "student.init_from").resolve()
    base = getattr(roles.ema, "base", None)
    state = full_state(base if base is not None else roles.ema)
    if not dist.main:
        return None
    if base is None:
        return SimpleNamespace(ema=plain(family, path, state).eval())
    return SimpleNamespace(ema=roles.ema.unsharded(state, recipe, family, path))  # layouts/lora.py's AdapterView
