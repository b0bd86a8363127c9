"""`roles.mode: full`: every role its own copy of a model.

- Teachers are named in the recipe by folder (FlowModel.save_pretrained layout) or as `teacher:NAME`, the shipped
  teacher in `src/flashdistill/assets/teachers/NAME/` (resolved by `flashdistill.models.shipped.teacher_folder`);
  with a Qwen-Image pipeline folder as the base, by pipeline folder or diffusers LoRA file. The recipe's family
  (distill/families.py) resolves and loads them. They are frozen and evaluated in eval mode.
- The student starts as a copy of the teacher `student.init_from`, the critic (fake score) as a copy of
  `critic.init_from` (the base teacher, paper §2.2); the EMA of the student starts as the student.
- Under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1; the process group is made by runtime/dist.py) student and
  critic are wrapped in DistributedDataParallel; teachers and EMA are plain replicas. Every rank builds the same
  global batch and takes its own contiguous rows, so N ranks at global batch B follow the trajectory of 1 rank at
  batch B (`tests/test_distill.py::test_two_ranks_match_one`).
- With `run.parallel: fsdp` every role is sharded instead (FSDP2, layouts/fsdp.py): teachers are read on rank 0
  and broadcast into shards; student, critic and EMA are shard-wise copies; the same rows per rank as DDP.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from flashdistill.distill.families import Family
from flashdistill.distill.layouts import fsdp
from flashdistill.distill.layouts.base import Roles, adamw_roles, frozen_dtype, trainable_copy
from flashdistill.distill.recipe import Recipe
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel
from flashdistill.runtime.dist import Dist


def load_teachers(recipe: Recipe, device: torch.device, family: Family,
                  dist: Dist | None = None) -> dict[str, FlowModel]:
    """Every named teacher, frozen, in eval mode; teachers sharing a path share one module. `family`
    (distill/families.py) reads the paths. With `dist` under fsdp: sharded teachers."""
    dtype = frozen_dtype(recipe.roles.frozen_dtype, device)
    sharding = fsdp.sharding(recipe, dist) if dist is not None else None
    loaded: dict[Path, FlowModel] = {}
    teachers = {}
    for name, spec in recipe.teachers.items():
        path = family.resolve(spec, f"teachers.{name}").resolve()
        if path not in loaded and sharding is not None:
            loaded[path] = fsdp.load(family, path, sharding, _frozen, dtype).eval()
        elif path not in loaded:
            loaded[path] = family.load_model(path, dtype).to(device).eval().requires_grad_(False)
        teachers[name] = loaded[path]
    spelling = {name: t.config.spell_quoted for name, t in teachers.items()}
    if len(set(spelling.values())) > 1:
        raise UserError(f"teachers: all teachers must share one text convention (model.spell_quoted), got {spelling}")
    shapes = {name: (t.config.resolution, t.config.channels) for name, t in teachers.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"teachers: all teachers must share resolution and channels, got {shapes}")
    return teachers


def _frozen(model: torch.nn.Module) -> None:
    model.requires_grad_(False)


def _wrap(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # The last block's text-stream outputs never reach the image tokens, so some parameters get no gradient.
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def build_full_roles(recipe: Recipe, dist: Dist, family: Family) -> Roles:
    """The roles of `roles.mode: full` (see the module docstring); `family` resolves and loads the teachers."""
    if fsdp.active(recipe.run.parallel, dist):
        return _sharded_roles(recipe, dist, family)
    teachers = load_teachers(recipe, dist.device, family)
    student = trainable_copy(teachers[recipe.student.init_from])
    critic = trainable_copy(teachers[recipe.critic.init_from])
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    if recipe.roles.gradient_checkpointing:
        for model in (student, critic):
            model.transformer.enable_gradient_checkpointing()
    return adamw_roles(teachers, student, ema, critic, recipe.dmd, recipe.critic, family,
                       student_train=_wrap(student, dist), critic_train=_wrap(critic, dist))


def _sharded_roles(recipe: Recipe, dist: Dist, family: Family) -> Roles:
    """`roles.mode: full` under `run.parallel: fsdp`: every role sharded (layouts/fsdp.py)."""
    teachers = load_teachers(recipe, dist.device, family, dist)

    def path(name: str) -> Path:
        return family.resolve(recipe.teachers[name], f"teachers.{name}").resolve()

    def trainable(model: torch.nn.Module) -> None:
        model.train().requires_grad_(True)
        if recipe.roles.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()

    s_name, c_name = recipe.student.init_from, recipe.critic.init_from
    sharding = fsdp.sharding(recipe, dist)
    student = fsdp.clone(teachers[s_name], family, path(s_name), sharding, trainable)
    critic = fsdp.clone(teachers[c_name], family, path(c_name), sharding, trainable)
    ema = fsdp.clone(student, family, path(s_name), sharding, _frozen).eval()
    return adamw_roles(teachers, student, ema, critic, recipe.dmd, recipe.critic, family)
