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
    out = Path(out)
    final, old = out / NAME, out / f"{NAME}.old"
    tmp = out / f".{NAME}-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    rng = {"torch": torch.get_rng_state()}
    state = {"format": FORMAT, "step": int(step), "meta": meta,
             "optimizer": flatten(optimizer.state_dict(), tensors, "optimizer"),
             "scheduler": flatten(scheduler.state_dict(), tensors, "scheduler"),
             "rng": flatten(rng, tensors, "rng")}
    save_file(_weights(model), str(tmp / "model.safetensors"))
    save_file(_weights(ema), str(tmp / "ema.safetensors"))
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


def _complete(folder: Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in FILES)


def find_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint under `out`, or None."""
    for folder in (Path(out) / NAME, Path(out) / f"{NAME}.old"):
        if _complete(folder):
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
    folder = Path(folder)
    state = read_state(folder)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    tensors = load_file(str(folder / "state.safetensors"))
    optimizer.load_state_dict(unflatten(state["optimizer"], tensors))
    scheduler.load_state_dict(unflatten(state["scheduler"], tensors))
    torch.set_rng_state(unflatten(state["rng"], tensors)["torch"])
    return state
