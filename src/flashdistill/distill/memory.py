"""Resident memory of built roles, counted from the live modules and optimizers, next to `flashdistill plan`.

`measure(roles)` walks every tensor the roles hold (teachers, student, EMA, critic; a shared base counted once) and
both AdamW states, and sorts them into frozen weights, trainable weights, EMA and optimizer state, in elements
and in bytes as they are resident (their real dtypes). `planned(counts, mode, teachers)` gives the same groups
from the planner's role rows (distill/plan.py), so a test can hold the planner to what a run really allocates:
the element counts must agree exactly (the planner's bytes assume bf16 frozen weights; a CPU run keeps float32).

Run `python benchmarks/role_memory.py` for the lora-vs-full table of the README.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

GROUPS = ("frozen", "trainable", "ema", "optimizer")


@dataclass
class Usage:
    elements: dict[str, int]
    bytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def _owner(module):
    """The module that owns a role's tensors: an AdapterView's shared base, else the module itself."""
    return getattr(module, "base", None) or module


def measure(roles) -> Usage:
    """Elements and bytes per group of everything `roles` keeps resident (each tensor once)."""
    trainable = {id(p) for opt in roles.optimizers().values() for g in opt.param_groups for p in g["params"]}
    ema = {id(p) for p in roles.ema.parameters()}
    seen: set[int] = set()
    elements = dict.fromkeys(GROUPS, 0)
    nbytes = dict.fromkeys(GROUPS, 0)
    owners = [_owner(m) for m in (*roles.teachers.values(), roles.student, roles.ema, roles.critic)]
    for owner in owners:
        for p in list(owner.parameters()) + list(owner.buffers()):
            if id(p) in seen:
                continue
            seen.add(id(p))
            group = "trainable" if id(p) in trainable else "ema" if id(p) in ema else "frozen"
            elements[group] += p.numel()
            nbytes[group] += p.numel() * p.element_size()
    for opt in roles.optimizers().values():
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.numel() > 1:  # exp_avg, exp_avg_sq (the step count is a scalar)
                    elements["optimizer"] += value.numel()
                    nbytes["optimizer"] += value.numel() * value.element_size()
    return Usage(elements, nbytes)


def planned(counts, mode: str, teachers: int) -> Usage:
    """The planner's role rows (one rank) in the same groups: elements and the planner's bytes."""
    from flashdistill.distill.plan import role_rows

    elements = dict.fromkeys(GROUPS, 0)
    nbytes = dict.fromkeys(GROUPS, 0)
    for row in role_rows(counts, mode, 1, teachers):
        if row.role.startswith("FSDP"):
            continue  # a transient gather buffer of sharded runs, not a resident role
        group = "ema" if row.role.startswith("EMA") else "trainable" if row.optimizer else "frozen"
        elements[group] += row.params
        nbytes[group] += int(row.weights)  # gradients are not resident between iterations
        if row.optimizer:
            elements["optimizer"] += 2 * row.params  # AdamW's two moments
            nbytes["optimizer"] += int(row.optimizer)
    return Usage(elements, nbytes)


@torch.no_grad()
def materialize_optimizer_states(roles) -> None:
    """Create AdamW's moments as the first step does, with zero gradients (weights unchanged: no decay, zero step)."""
    for opt in roles.optimizers().values():
        saved = [g["weight_decay"] for g in opt.param_groups]
        for g in opt.param_groups:
            g["weight_decay"] = 0.0
            for p in g["params"]:
                p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
        for g, wd in zip(opt.param_groups, saved):
            g["weight_decay"] = wd
