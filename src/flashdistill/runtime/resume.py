"""Resuming and diverging, shared by teacher training and distillation.

- `check_resume`: a resume is refused when a run-defining key differs from the checkpoint's, and the keys that may
  change (learning rates, weight decay, clipping, bookkeeping) are reported as `key old -> new`; the caller names
  the tables compared whole (distill/recipe.py and teacher/config.py: `composition`, `edit_mix`);
- `retune`: the config's learning rate and weight decay put into a restored optimizer and LR schedule;
- `TrainingDiverged` / `diverged`: a NaN/Inf step stops the run before it touches the weights, and a checkpoint
  no finite step has run from is set aside, so `--resume` continues from weights known to be good.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from flashdistill.errors import UserError
from flashdistill.runtime.checkpoint import read_state, set_aside_unconfirmed


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or Inf; training stops before the bad step touches the weights."""


def config_diff(a: dict, b: dict, prefix: str = "", whole: tuple[str, ...] = ()) -> list[str]:
    """The dotted keys whose values differ; a mapping under a key named in `whole` (a table of weights) is compared
    as one value, not key by key."""
    keys = sorted(set(a) | set(b))
    diffs = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict) and k not in whole:
            diffs += config_diff(va, vb, f"{prefix}{k}.", whole)
        elif va != vb:
            diffs.append(f"{prefix}{k}")
    return diffs


def _drop_keys(data: dict, keys: tuple[str, ...]) -> dict:
    data = copy.deepcopy(data)
    for key in keys:
        group, name = key.split(".")
        if isinstance(data.get(group), dict):
            data[group].pop(name, None)
    return data


def _has(data: dict, key: str) -> bool:
    """Whether `data` (a saved config) holds `key`: one written before the key existed has nothing to report."""
    group, name = key.split(".")
    return isinstance(data.get(group), dict) and name in data[group]


def _get(data: dict, key: str):
    group, name = key.split(".")
    return (data.get(group) or {}).get(name)


def check_resume(meta: dict, fingerprint: dict, settings: dict, saved_settings: str, resumable: tuple[str, ...],
                 what: str, whole: tuple[str, ...] = ()) -> list[str]:
    """Refuse a resume whose run-defining keys differ from the checkpoint's; return the changed `resumable` keys as
    `key old -> new`. A checkpoint written before a key became resumable still holds it in its fingerprint. Tables
    under a key named in `whole` are reported as one key (`config_diff`)."""
    if not isinstance(meta.get("fingerprint"), dict):
        raise UserError(f"--resume: the checkpoint records no {what} to compare with")
    diff = config_diff(_drop_keys(meta["fingerprint"], resumable), _drop_keys(fingerprint, resumable), whole=whole)
    if diff:
        raise UserError(f"--resume: the {what} differs from the checkpoint's in {', '.join(diff)} (only "
                        f"{', '.join(resumable)} may change)")
    old = meta.get(saved_settings) or {}
    return [f"{k} {_get(old, k)!r} -> {_get(settings, k)!r}" for k in resumable
            if _has(old, k) and _has(settings, k) and _get(old, k) != _get(settings, k)]


def retune(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, scheduler=None) -> None:
    """Put the config's lr and weight decay into a restored optimizer (its state_dict brought the old ones)."""
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay
        group["initial_lr"] = lr
        group["lr"] = lr
    if scheduler is not None:  # LambdaLR: lr = base lr · factor(step)
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        factors = [f(scheduler.last_epoch) for f in scheduler.lr_lambdas]
        for group, factor in zip(optimizer.param_groups, factors):
            group["lr"] = lr * factor
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def diverged(err: TrainingDiverged, out: Path, last_good: int, unit: str, files=None) -> TrainingDiverged:
    """The divergence message, after setting aside a checkpoint no finite step has run from: --resume then
    continues from weights known to be good."""
    kept = set_aside_unconfirmed(out, last_good, *([files] if files else []))
    where = (f"--resume continues from the checkpoint at {unit} {read_state(kept)['step']}, the last known good"
             if kept else f"no checkpoint holds good weights yet, so --resume starts again from {unit} 0")
    return TrainingDiverged(f"{err}. The weights, optimizer and EMA were not updated by the bad {unit}; {where}")
