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

Atomicity: the checkpoint is written to a temporary sibling folder, then the old one is moved aside, the new one
renamed into place and the old one deleted. A kill at any point leaves either the old or the new checkpoint
complete; `find_checkpoint` also accepts the moved-aside one (`checkpoint.old`) if the kill fell between renames.

`save_state` / `load_state` are the general form (any named modules and stateful objects), used by the
distillation engine for its student, EMA, critic and two optimizers; `save_checkpoint` is the teacher's layout.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from flashdistill.errors import UserError

FORMAT = 1
NAME = "checkpoint"
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
    final, old = out / NAME, out / f"{NAME}.old"
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
    _fsync_dir_files(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in files)


def find_checkpoint(out: Path, files: tuple[str, ...] = FILES) -> Path | None:
    """The newest complete checkpoint under `out` (one holding all of `files`), or None."""
    for folder in (Path(out) / NAME, Path(out) / f"{NAME}.old"):
        if _complete(folder, files):
            return folder
    return None


def read_state(folder: Path) -> dict:
    """state.json of a checkpoint folder (step, meta, structure), without loading any tensor."""
    try:
        state = json.loads((Path(folder) / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"checkpoint {folder}: unreadable state.json: {err}") from None
    if state.get("format") != FORMAT:
        raise UserError(f"checkpoint {folder}: format {state.get('format')!r}, expected {FORMAT}")
    return state


def load_checkpoint(folder: Path, model, ema, optimizer, scheduler) -> dict:
    """Restore everything `save_checkpoint` wrote, in place; returns the state (step, meta)."""
    return load_state(folder, {"model": model, "ema": ema}, {"optimizer": optimizer, "scheduler": scheduler})


def load_state(folder: Path, modules: dict[str, torch.nn.Module], objects: dict) -> dict:
    """Restore everything `save_state` wrote, in place; returns the state (step, meta)."""
    folder = Path(folder)
    state = read_state(folder)
    for name, module in modules.items():
        module.load_state_dict(load_file(str(folder / f"{name}.safetensors")))
    tensors = load_file(str(folder / "state.safetensors"))
    for name, obj in objects.items():
        obj.load_state_dict(unflatten(state[name], tensors))
    torch.set_rng_state(unflatten(state["rng"], tensors)["torch"])
    return state
