"""Pickle-free, atomic training checkpoints that resume exactly.

Layout of `<out>/checkpoint/`:

    model.safetensors   trained weights (FlowModel.state_dict)
    ema.safetensors     EMA weights
    state.safetensors   every tensor of the optimizer state and the RNG states
    state.json          everything else: step, optimizer/scheduler structure, config, format; written last

Project rule: weights load only from safetensors and nothing is ever unpickled, so `torch.save` is out. Nested
state (the optimizer's `{"state": {0: {"exp_avg": T, ...}}, "param_groups": [...]}`) is flattened by `flatten`:
tensors go to safetensors under path-like names, the structure to JSON with tagged dicts and tuples so that int
keys and tuples come back as they were. Python floats survive JSON exactly (repr round-trips).

Atomicity: the checkpoint is written to a temporary sibling folder, then the current one is renamed to
`checkpoint.prev` (replacing the one before it) and the new one renamed into place. A kill at any point leaves a
complete checkpoint, and two are kept: `restore_latest` loads the newest that reads back and falls back to
`checkpoint.prev` when the newest is damaged (a truncated or garbage safetensors file, a broken state.json).

Divergence: a checkpoint is "confirmed" once an iteration run from its weights gave a finite loss. When a run
diverges, `set_aside_unconfirmed` renames a newest checkpoint that was never confirmed to `checkpoint.diverged`, so
`--resume` continues from the last weights known to be good (see `distill/trainer.py`, `teacher/train.py`).

`save_state` / `load_state` are the general form (any named modules and stateful objects), used by the
distillation engine for its student, EMA, critic and two optimizers; `save_checkpoint` is the teacher's layout.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flashdistill.errors import UserError

FORMAT = 1
NAME = "checkpoint"
PREVIOUS = f"{NAME}.prev"
DIVERGED = f"{NAME}.diverged"
LEGACY = f"{NAME}.old"  # written by earlier versions between two renames
FILES = ("model.safetensors", "ema.safetensors", "state.safetensors", "state.json")


def flatten(obj, tensors: dict[str, torch.Tensor], path: str = "t"):
    """JSON-able structure of `obj`; its tensors are moved into `tensors` under their path."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        items = []
        for i, (k, v) in enumerate(obj.items()):
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot store dict key {k!r} at {path}")
            items.append([k, flatten(v, tensors, f"{path}.{i}")])
        return {"__dict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {path} without pickle")


def unflatten(data, tensors: dict[str, torch.Tensor]):
    """Inverse of `flatten`."""
    if isinstance(data, list):
        return [unflatten(v, tensors) for v in data]
    if isinstance(data, dict):
        if "__tensor__" in data:
            return tensors[data["__tensor__"]]
        if "__tuple__" in data:
            return tuple(unflatten(v, tensors) for v in data["__tuple__"])
        return {k: unflatten(v, tensors) for k, v in data["__dict__"]}
    return data


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _fsync_dir_files(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def save_checkpoint(out: Path, model, ema, optimizer, scheduler, step: int, meta: dict) -> Path:
    """Write `<out>/checkpoint/` atomically (see module docstring); `step` = optimizer steps completed."""
    return save_state(out, {"model": model, "ema": ema}, {"optimizer": optimizer, "scheduler": scheduler}, step, meta)


def save_state(out: Path, modules: dict[str, torch.nn.Module], objects: dict, step: int, meta: dict) -> Path:
    """The general form of `save_checkpoint`: `<name>.safetensors` per module, and the `state_dict()` of every
    stateful object (optimizers, schedulers) under its name in state.json/state.safetensors. Atomic."""
    out = Path(out)
    tmp = out / f".{NAME}-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    rng = {"torch": torch.get_rng_state()}
    state = {"format": FORMAT, "step": int(step), "meta": meta}
    for name, obj in objects.items():
        state[name] = flatten(obj.state_dict(), tensors, name)
    state["rng"] = flatten(rng, tensors, "rng")
    for name, module in modules.items():
        save_file(_weights(module), str(tmp / f"{name}.safetensors"))
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")  # last: its presence marks completeness
    return promote(tmp, out)


def promote(tmp: Path, out: Path) -> Path:
    """Make the finished checkpoint folder `tmp` the newest, `<out>/checkpoint/`: its files are synced, the current
    newest becomes `checkpoint.prev` (the older one is dropped), then `tmp` is renamed into place."""
    final, prev = out / NAME, out / PREVIOUS
    _fsync_dir_files(tmp)
    if final.exists():  # absent after set_aside_unconfirmed: then checkpoint.prev stays the previous one
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(final, prev)
    os.replace(tmp, final)
    shutil.rmtree(out / LEGACY, ignore_errors=True)
    return final


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


def checkpoints(out: Path, files: tuple[str, ...] = FILES) -> list[Path]:
    """The complete checkpoints under `out` (each holding all of `files`), newest first."""
    return [f for f in (Path(out) / NAME, Path(out) / LEGACY, Path(out) / PREVIOUS) if _complete(f, files)]


def find_checkpoint(out: Path, files: tuple[str, ...] = FILES) -> Path | None:
    """The newest complete checkpoint under `out` (one holding all of `files`), or None."""
    found = checkpoints(out, files)
    return found[0] if found else None


class CheckpointUnreadable(UserError):
    """A checkpoint folder whose files do not read back (truncated, garbage, broken JSON)."""


# What a damaged checkpoint raises while it is read: safetensors' own error, I/O, JSON and structure errors.
UNREADABLE = (CheckpointUnreadable, SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError)


def read_state(folder: Path) -> dict:
    """state.json of a checkpoint folder (step, meta, structure), without loading any tensor."""
    try:
        state = json.loads((Path(folder) / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointUnreadable(f"checkpoint {folder}: unreadable state.json ({err})") from None
    if not isinstance(state, dict) or not isinstance(state.get("meta"), dict) or \
            not isinstance(state.get("step"), int):
        raise CheckpointUnreadable(f"checkpoint {folder}: state.json lacks its step or meta")
    if state.get("format") != FORMAT:
        raise CheckpointUnreadable(f"checkpoint {folder}: format {state.get('format')!r}, expected {FORMAT}")
    return state


def restore_latest(out: Path, files: tuple[str, ...], load: Callable[[Path], dict]) -> dict | None:
    """`load(folder)` on the newest checkpoint that reads back, falling back to the previous one when the newest
    is damaged (a note on stderr says so); None when there is no checkpoint. UserError when none reads back."""
    problems = []
    for folder in checkpoints(out, files):
        try:
            loaded = load(folder)
        except UNREADABLE as err:
            reason = f"{type(err).__name__}: {err}" if not isinstance(err, UserError) else str(err)
            problems.append(f"{folder.name}: {' '.join(reason.split())[:200]}")
            continue
        for problem in problems:
            print(f"note: a checkpoint does not read back ({problem}); used the previous one, {folder}",
                  file=sys.stderr)
        return loaded
    if problems:
        raise UserError(f"{out}: no checkpoint reads back ({'; '.join(problems)}); start again with another --out")
    return None


def set_aside_unconfirmed(out: Path, confirmed_through: int, files: tuple[str, ...] = FILES) -> Path | None:
    """After a divergence: rename the newest checkpoint to checkpoint.diverged when its step is past
    `confirmed_through` (the last iteration that ran from good weights); returns the checkpoint --resume will use."""
    newest = Path(out) / NAME
    if _complete(newest, files):
        try:
            step = read_state(newest)["step"]
        except CheckpointUnreadable:
            step = confirmed_through + 1
        if step > confirmed_through:
            shutil.rmtree(Path(out) / DIVERGED, ignore_errors=True)
            os.replace(newest, Path(out) / DIVERGED)
    return find_checkpoint(out, files)


def load_checkpoint(folder: Path, model, ema, optimizer, scheduler) -> dict:
    """Restore everything `save_checkpoint` wrote, in place; returns the state (step, meta)."""
    return load_state(folder, {"model": model, "ema": ema}, {"optimizer": optimizer, "scheduler": scheduler})


def load_state(folder: Path, modules: dict[str, torch.nn.Module], objects: dict) -> dict:
    """Restore everything `save_state` wrote, in place; returns the state (step, meta)."""
    folder = Path(folder)
    state = read_state(folder)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))  # SafetensorError if damaged
    tensors = load_file(str(folder / "state.safetensors"))
    for name, obj in objects.items():
        obj.load_state_dict(unflatten(state[name], tensors))
    torch.set_rng_state(unflatten(state["rng"], tensors)["torch"])
    return state
