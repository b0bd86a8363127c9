"""Resident memory of built roles, counted from the live modules and optimizers, next to `flashdistill plan`.

`measure(roles)` walks every tensor the roles hold (teachers, student, EMA, critic; a shared base counted once) and
both AdamW states, and sorts them into frozen weights, trainable weights, EMA and optimizer state, in elements
and in bytes as they are resident (their real dtypes). `planned(counts, mode, teachers)` gives the same groups
from the planner's role rows (layouts/plan.py), so a test can hold the planner to what a run really allocates:
the element counts must agree exactly (the planner's bytes assume bf16 frozen weights; a CPU run keeps float32).

Sharded roles (`run.parallel: fsdp`) count this rank's shards (DTensor local tensors), and `measure_grads` counts the
gradient shards after a backward, so a 2-rank run can be held to `flashdistill plan --world-size 2`
(`planned(..., world=2)`; benchmarks/fsdp_memory.py).

Run `python benchmarks/role_memory.py` for the lora-vs-full table of docs/full-scale.md.
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


def _numel(t: torch.Tensor) -> int:
    """Elements resident on this rank: the local shard of a DTensor."""
    return (t.to_local() if hasattr(t, "to_local") else t).numel()


def measure(roles) -> Usage:
    """Elements and bytes per group of everything `roles` keeps resident on this rank (each tensor once)."""
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
            elements[group] += _numel(p)
            nbytes[group] += _numel(p) * p.element_size()
    for opt in roles.optimizers().values():
        for state in opt.state.values():
            for value in state.values():
                if torch.is_tensor(value) and value.numel() > 1:  # exp_avg, exp_avg_sq (the step count is a scalar)
                    elements["optimizer"] += _numel(value)
                    nbytes["optimizer"] += _numel(value) * value.element_size()
    return Usage(elements, nbytes)


def measure_grads(roles) -> tuple[int, int]:
    """(elements, bytes) of the gradients this rank holds for the trainable roles (call after a backward)."""
    grads = [p.grad for opt in roles.optimizers().values() for g in opt.param_groups for p in g["params"]
             if p.grad is not None]
    return sum(_numel(g) for g in grads), sum(_numel(g) * g.element_size() for g in grads)


def planned(counts, mode: str, teachers: int, world: int = 1) -> Usage:
    """The planner's role rows per rank (`world` ranks) in the same groups: elements (params / world for a
    sharded run, not rounded) and the planner's bytes; `grads` is kept apart in `planned_grads`."""
    from flashdistill.distill.layouts.plan import role_rows

    elements = dict.fromkeys(GROUPS, 0)
    nbytes = dict.fromkeys(GROUPS, 0)
    for row in role_rows(counts, mode, world, teachers):
        if row.role.startswith("FSDP"):
            continue  # a transient gather buffer of sharded runs, not a resident role
        group = "ema" if row.role.startswith("EMA") else "trainable" if row.optimizer else "frozen"
        elements[group] += row.params if world == 1 else row.params / world
        nbytes[group] += int(row.weights)  # gradients are not resident between iterations
        if row.optimizer:
            elements["optimizer"] += 2 * row.params if world == 1 else 2 * row.params / world  # AdamW's moments
            nbytes["optimizer"] += int(row.optimizer)
    return Usage(elements, nbytes)


def planned_grads(counts, mode: str, teachers: int, world: int) -> tuple[float, float]:
    """(elements, bytes) of the planner's gradients per rank."""
    from flashdistill.distill.layouts.plan import role_rows

    rows = [r for r in role_rows(counts, mode, world, teachers) if r.grads]
    return sum(r.params for r in rows) / world, sum(r.grads for r in rows)


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
