"""`build_pairs`: sample the teachers' many-step images for a pairs cache (distill/pairs.py says what a pair is).

Shards of `shard_size` pairs, each sampled in batches of `batch_size` and written atomically; the same call again
samples only the pairs no shard holds (resume), and a folder built with another identity (teachers, guidance, CFG,
grid, shape, seed, mix) is refused. Under torchrun (run.parallel ddp: every rank holds the teachers) rank r samples
the missing shards r, r + N, ...; rank 0 writes the index at the end.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from flashdistill.distill.pairs import (
    INDEX,
    PairsCache,
    guidance_row,
    pair_item,
    pair_noise,
    teacher_images,
    text_tag,
    write_index,
    write_shard,
)
from flashdistill.errors import UserError


def pairs_identity(recipe, family, teachers: dict, sigmas: torch.Tensor, cfg_scale: float, shape, seed: int
                   ) -> dict:
    """What the pairs depend on: a folder built with another identity is refused."""
    from flashdistill.distill.inputs import input_fingerprint

    inputs = input_fingerprint(recipe, family, with_pairs=False)["inputs"]  # the recipe's cache may be this one
    return {"format": 1, "family": family.name, "teachers": {k: inputs[f"teachers.{k}"] for k in teachers},
            "data": {k: v for k, v in inputs.items() if k.startswith("data.")},
            "guidance": recipe.guidance, "timesteps": recipe.timesteps, "cfg_scale": float(cfg_scale),
            "sigmas": [round(float(s), 8) for s in sigmas], "shape": list(shape), "seed": int(seed),
            "mix": json.loads(json.dumps(asdict(recipe.task_mix()), default=list))}


def _check_identity(folder: Path, identity: dict) -> None:
    if not (folder / INDEX).exists():
        return
    old = PairsCache(folder).identity
    for key in identity:
        if old.get(key) != identity[key]:
            raise UserError(f"{folder}: these pairs were built with another {key} (teachers, guidance, CFG, grid, "
                            f"shape, seed or mix must match to extend it); use another --out")


def _teachers(recipe, dist, family) -> dict:
    """The frozen teachers: one shared base with adapters (roles.mode lora), else each its own model."""
    if recipe.roles.mode == "lora":
        from flashdistill.distill.layouts.build import build_roles

        return build_roles(recipe, dist, family).teachers
    from flashdistill.distill.layouts.full import load_teachers

    return load_teachers(recipe, dist.device, family)


def build_pairs(recipe, folder: str | Path, n: int, nfe: int = 50, cfg_scale: float | None = None,
                batch_size: int = 32, shard_size: int = 256, seed: int = 0, command: str = "", encoder=None,
                progress: bool = True) -> dict:
    """Sample what `folder` lacks of pairs 0..n-1 (see the module docstring); returns counts."""
    from tqdm import tqdm

    from flashdistill.distill.families import family_for
    from flashdistill.runtime.dist import setup_distributed

    folder = Path(folder)
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    dist = setup_distributed(recipe.run.device, batch_size)
    if dist.world > 1 and recipe.run.parallel != "ddp":
        raise UserError("pairs under torchrun: set run.parallel=ddp (every rank holds the teachers and samples "
                        "its own shards)")
    family = family_for(recipe)
    teachers = _teachers(recipe, dist, family)
    base = teachers[recipe.student.init_from]
    source = family.source(recipe, folder, encoder, base.config)
    sigmas = family.sampling_sigmas(recipe.teachers[recipe.student.init_from], nfe)
    cfg = recipe.dmd.cfg_scale if cfg_scale is None else float(cfg_scale)
    identity = pairs_identity(recipe, family, teachers, sigmas, cfg, source.shape, seed)
    if dist.main:
        folder.mkdir(parents=True, exist_ok=True)
        _check_identity(folder, identity)
    dist.barrier()
    have = set(PairsCache(folder).indices) if (folder / INDEX).exists() else set()
    guidance, mix = recipe.weights, recipe.task_mix()
    todo = [(first, [i for i in range(first, min(first + shard_size, n)) if i not in have])
            for first in range(0, n, shard_size)]
    todo = [(first, missing) for s, (first, missing) in enumerate(todo) if missing and s % dist.world == dist.rank]
    bar = tqdm(total=sum(len(m) for _, m in todo), unit="pair", desc="pairs", disable=not (progress and dist.main))
    for _, missing in todo:
        items, targets = [], []
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            keys = [pair_item(i, mix, seed) for i in chunk]
            batch = source.items(keys)
            z = pair_noise(seed, chunk, source.shape).to(dist.device)
            x = teacher_images(teachers, guidance, recipe.timesteps, sigmas.to(dist.device), z,
                               batch.cond.to(dist.device), batch.uncond.to(dist.device), cfg, family.cfg_rule,
                               recipe.dmd.bf16)
            if not bool(torch.isfinite(x).all()):
                raise UserError(f"pairs {chunk[0]}..{chunk[-1]}: the teachers' images hold NaN or Inf; check the "
                                f"teachers' weights and dmd.cfg_scale")
            targets.append(x.cpu())
            items += [[task, cat, index, text_tag(source.text((task, cat, index)))] for task, cat, index in keys]
            bar.update(len(chunk))
        write_shard(folder, missing[0], torch.cat(targets), missing, items)
        source.flush()
    bar.close()
    dist.barrier()
    index = write_index(folder, identity, command) if dist.main else {}
    if dist.main and index.get("pairs", n) < n:
        print(f"note: {folder} holds {index['pairs']} of {n} pairs", file=sys.stderr)
    return {"pairs": index.get("pairs"), "sampled": sum(len(m) for _, m in todo), "folder": str(folder)}


def guidance_rows_used(timesteps: list[float], sigmas: torch.Tensor) -> list[int]:
    """Which λ row each ODE step of `sigmas` uses (for the command's summary line)."""
    return [guidance_row(timesteps, float(t)) for t in sigmas[:-1]]
