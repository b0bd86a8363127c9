"""Sharded, atomic, pickle-free checkpoints of FSDP2 runs (`run.parallel: fsdp`) with torch.distributed.checkpoint.

Layout of `<out>/checkpoint/`:

    shard-0000R-*.safetensors  rank R's shards of the modules' state dicts (`student/<name>`, `ema/...`,
                               `critic/...`) and of the optimizers' moments, each rank writing its own file (DCP's
                               HuggingFaceStorageWriter: safetensors whose header records each shard's offsets, so
                               nothing is unpickled on load, as runtime/checkpoint.py promises; `read_full` puts
                               the shards back together without torch.distributed)
    state.json                 step, meta, the optimizers' structure (flattened as in runtime/checkpoint.py), the
                               world size it was written with; written last, by rank 0: its presence marks
                               completeness

Atomicity as in runtime/checkpoint.py: all ranks write into one temporary sibling folder (rank 0 names it), then,
after a barrier, rank 0 writes state.json, fsyncs and renames: the current checkpoint to `checkpoint.prev`, the new
one into place. A kill of any rank at any moment leaves the previous checkpoint complete (the temporary folder is
removed by the next start). Loading reads each rank's slices into the live shards (`dcp.load` in place), so the
same world size resumes exactly. The torch RNG is not stored: every draw of an iteration comes from
`runtime/steps.step_generator`.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import torch

from flashdistill.runtime.checkpoint import FORMAT, NAME, flatten, promote, read_state, unflatten

FILES = ("state.json",)
SHARDING_KEY = "DCP_SHARDING_INFO"  # safetensors header entry: {name: {"saved_offsets": [...]}}


def _dist():
    import torch.distributed as torch_dist

    return torch_dist


def _tensors(modules: dict[str, torch.nn.Module], objects: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """(every tensor to store, by name; the optimizers' structure with tensors replaced by their names). Optimizer
    tensors are named by parameter index and key (`optimizer/state/3/exp_avg`), so a name means the same tensor
    whichever parameters hold state."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}/{key}"] = value.detach()
    structure = {}
    for name, opt in objects.items():
        sd = opt.state_dict()
        state = {}
        for idx, entry in sd["state"].items():
            state[str(idx)] = {}
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"{name}/state/{idx}/{key}"] = value.detach()
                    value = {"__tensor__": f"{name}/state/{idx}/{key}"}
                state[str(idx)][key] = value
        structure[name] = {"state": state, "param_groups": flatten(sd["param_groups"], {}, f"{name}/groups")}
    return tensors, structure


def _optimizer_state(saved: dict, tensors: dict[str, torch.Tensor]) -> dict:
    """The optimizer state dict `saved` describes, its tensors taken from `tensors`."""
    state = {int(idx): {k: tensors[v["__tensor__"]] if isinstance(v, dict) else v for k, v in entry.items()}
             for idx, entry in saved["state"].items()}
    return {"state": state, "param_groups": unflatten(saved["param_groups"], {})}


def save_sharded(out: Path, modules: dict[str, torch.nn.Module], objects: dict, step: int, meta: dict) -> Path:
    """Write `<out>/checkpoint/` from every rank (collective; see the module docstring)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    torch_dist = _dist()
    out = Path(out)
    box = [f".{NAME}-tmp-{uuid.uuid4().hex[:8]}"]
    torch_dist.broadcast_object_list(box, src=0)
    tmp = out / box[0]
    tensors, structure = _tensors(modules, objects)
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(tmp), save_distributed=True))
    torch_dist.barrier()
    if torch_dist.get_rank() == 0:
        state = {"format": FORMAT, "step": int(step), "meta": meta, "sharded": torch_dist.get_world_size(),
                 **structure}
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")  # last: marks completeness
        promote(tmp, out)
    torch_dist.barrier()
    return out / NAME


def load_sharded(folder: Path, modules: dict[str, torch.nn.Module], objects: dict) -> dict:
    """Restore what `save_sharded` wrote into the live (sharded) modules and optimizers; returns the state.
    The optimizers must hold their state already (`materialize_optimizer_states`): it is the template the
    saved moments are read into."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    from flashdistill.runtime.checkpoint import CheckpointUnreadable

    folder = Path(folder)
    state = read_state(folder)
    world = _dist().get_world_size()
    if state.get("sharded") != world:
        raise CheckpointUnreadable(f"checkpoint {folder}: written by {state.get('sharded')} ranks, this run has "
                                   f"{world}; resume with the same --nproc_per_node x --nnodes")
    live, _ = _tensors(modules, objects)  # module tensors share the parameters; optimizer tensors its state
    wanted = [k for k in live if k.split("/")[0] in modules]
    wanted += [e["__tensor__"] for name in objects for entry in state[name]["state"].values() for e in entry.values()
               if isinstance(e, dict)]
    missing = [k for k in wanted if k not in live]
    if missing:
        raise CheckpointUnreadable(f"checkpoint {folder}: holds state this run has no place for ({missing[0]}, ...)")
    targets = {k: live[k] for k in wanted}
    dcp.load(targets, storage_reader=HuggingFaceStorageReader(str(folder)))  # in place, each rank its slices
    for name, module in modules.items():
        module.load_state_dict({key[len(name) + 1:]: v for key, v in targets.items() if key.startswith(name + "/")})
    for name, obj in objects.items():
        obj.load_state_dict(_optimizer_state(state[name], targets))
    return state


def read_full(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The unsharded tensors of a sharded checkpoint whose names start with `prefix` (prefix removed), assembled
    on the host from every rank's safetensors file and the offsets in their headers. No process group needed."""
    from safetensors import safe_open

    parts: dict[str, list] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            info = json.loads((f.metadata() or {}).get(SHARDING_KEY, "{}"))
            for key in f.keys():
                if key.startswith(prefix):
                    offsets = info.get(key, {}).get("saved_offsets") or [0] * len(f.get_slice(key).get_shape())
                    parts.setdefault(key, []).append((offsets, f.get_tensor(key)))
    out = {}
    for key, chunks in parts.items():
        shape = [max(o[d] + t.shape[d] for o, t in chunks) for d in range(chunks[0][1].dim())]
        full = torch.empty(shape, dtype=chunks[0][1].dtype)
        for offsets, t in chunks:
            full[tuple(slice(o, o + n) for o, n in zip(offsets, t.shape))] = t
        out[key[len(prefix):]] = full
    return out
