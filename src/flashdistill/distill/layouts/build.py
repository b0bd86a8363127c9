"""`build_roles(recipe, dist)`: the roles in the layout the recipe names (`roles.mode` full or lora; under
`run.parallel: fsdp` sharded), their teachers read by the recipe's family (distill/families.py) unless one is
given. See layouts/full.py and layouts/lora.py."""

from __future__ import annotations

from flashdistill.distill.families import family_for
from flashdistill.distill.layouts.base import Roles
from flashdistill.distill.layouts.full import build_full_roles
from flashdistill.distill.layouts.lora import build_lora_roles
from flashdistill.distill.recipe import Recipe
from flashdistill.runtime.dist import Dist


def build_roles(recipe: Recipe, dist: Dist, family=None) -> Roles:
    family = family or family_for(recipe)
    if recipe.roles.mode == "lora":  # one frozen base shared by every role (layouts/lora.py)
        return build_lora_roles(recipe, dist, family)
    return build_full_roles(recipe, dist, family)
