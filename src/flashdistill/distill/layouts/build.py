"""`build_roles(recipe, dist)`: the roles in the layout the recipe names (`roles.mode` full or lora; under
`run.parallel: fsdp` sharded), their teachers read by the recipe's family (distill/families.py) unless one is
given. See layouts/full.py and layouts/lora.py. With `gan` on, DMD2's classifier head joins them; with
`run.compile: blocks` every transformer's repeated blocks are compiled (models/compiled.py)."""

from __future__ import annotations

import torch

from flashdistill.distill.families import Family, family_for
from flashdistill.distill.gan import GanSection, build_head
from flashdistill.distill.layouts.base import Roles
from flashdistill.distill.layouts.full import build_full_roles
from flashdistill.distill.layouts.lora import build_lora_roles
from flashdistill.distill.recipe import Recipe
from flashdistill.models.compiled import compile_blocks
from flashdistill.runtime.config import require
from flashdistill.runtime.dist import Dist


def build_roles(recipe: Recipe, dist: Dist, family: Family | None = None) -> Roles:
    family = family or family_for(recipe)
    if recipe.roles.mode == "lora":  # one frozen base shared by every role (layouts/lora.py)
        roles = build_lora_roles(recipe, dist, family)
    else:
        roles = build_full_roles(recipe, dist, family)
    if recipe.gan.enabled():
        add_gan_head(roles, recipe.gan, recipe.dmd.seed, dist)
    if recipe.run.compile == "blocks":
        compile_blocks(transformers(roles), dist.device)
    return roles


def transformers(roles: Roles) -> list[torch.nn.Module]:
    """Every distinct diffusers transformer the roles run (one in roles.mode lora: the shared base)."""
    models = [*roles.teachers.values(), roles.student, roles.critic, roles.ema]
    found = {id(m): m for m in (getattr(getattr(x, "base", x), "transformer", None) for x in models) if m is not None}
    return list(found.values())


def add_gan_head(roles: Roles, gan: GanSection, seed: int, dist: Dist) -> None:
    """DMD2's classifier head on the critic's features and its AdamW (distill/gan.py), checkpointed with the roles."""
    require(dist.world == 1, "gan", "runs in one process for now (its classifier head is not wrapped for "
            "torchrun's data parallelism); set its weights to 0 or run without torchrun")
    head = build_head(roles.critic, gan, seed).to(dist.device)
    roles.gan_head = head
    roles.opt_gan = torch.optim.AdamW(head.parameters(), lr=gan.lr, weight_decay=0.0)
