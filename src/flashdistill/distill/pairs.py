"""Paired regression (DMD, Yin et al. 2024 §3.3): the teachers' own many-step images from fixed noises, cached once,
and the student regressed onto them from those very noises.

    flashdistill pairs RECIPE --n 4000 --out runs/pairs [--nfe 50] [--set KEY=VALUE ...]

Pair i is an item of the recipe's training mix (row 0 of `choose_items(i, 1, mix, seed)`: the same task mixture,
composition and edit mix as the DMD batches, its own seed stream), a noise z_i (`pair_noise`: a pure function of
(seed, i), regenerated when read, never stored) and the target x_i: where the teachers' ODE takes z_i from t = 1
to 0 in `nfe` Euler steps on the base teacher's sampling grid (`family.sampling_sigmas`), each step's velocity
from the λ-mix of the guided teachers (eq. 5-7; the row of the student step whose interval holds the step's time,
so a step-wise table mixes as the student's steps do) with CFG `dmd.cfg_scale`, the real score's own. The targets
are what teacher@50 would draw for that noise: sharp images paired with the noise that makes them, so the student
is pulled towards the teachers' noise-to-image map, modes and all, not towards a mean (first-step flow matching's
E[x | c]). With data files the items are the user's prompts and edits: no real images are needed.

Training (`pairs:` in the recipe; `PairsSection`): each iteration draws `pairs.batch_size` pairs (its own stream),
runs the student's first step on z_i and adds `weight(i) · distance(x0, x_i)` to the generator's loss, the weight
going linearly from `pairs.weight` to `pairs.final_weight` over the run. `distance`: `mse`, or `critic`, the
squared difference of the critic's unit-normalised token features (LPIPS-like; blocks as the GAN reads them) with
both images lightly noised to FEATURE_T. The reader's features are not offered: the world judge scores with them,
so a student trained on them would be graded by its own loss.

Layout of the folder: `index.json` (the pairs' identity: family, teachers' fingerprints, guidance table, CFG, grid,
shape, seed, mix; the command; per shard its pair range and sha256) and `pairs-FIRST.safetensors` shards (`x`
(S, C, H, W) float16 targets, `index` (S,) int64, metadata `items`: [task, category, index, text sha256 prefix]).
Each shard is written to a temporary name and renamed (atomic): a killed build loses at most the shard it was
filling, and the same command again samples only the missing pairs (resume). A folder built with another identity
is refused, naming what differs. Tests: `pytest tests/test_pairs.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from flashdistill.errors import UserError, one_line
from flashdistill.files import file_digest
from flashdistill.flow import interpolate, v_from_x0, x0_from_v
from flashdistill.runtime.config import require

FORMAT = 1
INDEX = "index.json"
SHARD_GLOB = "pairs-*.safetensors"
FEATURE_T = 0.1  # the critic's inputs are never clean images (it trains on t >= dmd.t_min): noise them lightly
DISTANCES = ("mse", "critic")


@dataclass
class PairsSection:
    folder: str | None = None  # a pairs cache written by `flashdistill pairs`; null = off
    weight: float = 0.0  # λ of the paired regression at the first iteration
    final_weight: float | None = None  # λ at the last iteration (linear in between); null = `weight` throughout
    batch_size: int = 0  # pairs per iteration (global); 0 = dmd.batch_size
    distance: str = "mse"  # mse | critic (see the module docstring)

    def enabled(self) -> bool:
        return bool(self.folder) and (self.weight > 0 or (self.final_weight or 0) > 0)

    def weight_at(self, step: int, total: int) -> float:
        end = self.weight if self.final_weight is None else self.final_weight
        return self.weight + (end - self.weight) * step / max(1, total - 1)

    def check(self) -> None:
        require(self.weight >= 0, "pairs.weight", "must be >= 0 (0 = off)")
        require(self.final_weight is None or self.final_weight >= 0, "pairs.final_weight", "must be >= 0")
        require(self.batch_size >= 0, "pairs.batch_size", "must be >= 0 (0 = dmd.batch_size)")
        require(self.distance in DISTANCES, "pairs.distance", f"must be one of {', '.join(DISTANCES)}, got "
                f"{self.distance!r}")
        require(not (self.weight > 0 or (self.final_weight or 0) > 0) or bool(self.folder), "pairs.folder",
                "not set: build a pairs cache with `flashdistill pairs RECIPE --out DIR` and name it here")


def pair_item(i: int, mix, seed: int) -> tuple[str, str, int]:
    """Pair i's (task, category, index): the training mix's own sampler, on a stream of its own."""
    from flashdistill.data.batches import choose_items

    return choose_items(i, 1, mix, seed + 7_919)[0]


def pair_noise(seed: int, indices: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """z of the pairs `indices` (B, *shape): each a pure function of (seed, i), drawn on the CPU."""
    out = []
    for i in indices:
        state = np.random.SeedSequence([int(seed), int(i), 7]).generate_state(1, np.uint64)[0]
        out.append(torch.randn(shape, generator=torch.Generator().manual_seed(int(state))))
    return torch.stack(out)


def text_tag(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def guidance_row(timesteps: list[float], t: float) -> int:
    """The student step whose interval [t_{k+1}, t_k] holds ODE time t (t_0 = 1): the row of λ used there."""
    return sum(1 for tk in timesteps[1:] if tk >= t - 1e-9)


@torch.no_grad()
def teacher_images(teachers: dict, guidance, timesteps: list[float], sigmas: torch.Tensor, z: torch.Tensor, cond,
                   uncond, cfg_scale: float, cfg_rule=None, bf16: bool = False) -> torch.Tensor:
    """The λ-mixed guided teachers' ODE from z at t = 1 along `sigmas` (nfe + 1 times, last 0): x (B, C, H, W)."""
    from flashdistill.distill.dmd import TeacherMix, real_x0

    for t, t_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        weights = guidance.weights(guidance_row(timesteps, t), cond.category)  # (B, M)
        tt = torch.full((len(z),), t, device=z.device)
        x0, _ = real_x0(TeacherMix(teachers, weights, cond, uncond, cfg_scale, bf16, cfg_rule), z, tt)
        z = z + (t_next - t) * v_from_x0(z, tt, x0)
    return z


def index_path(folder: str | Path) -> Path:
    """`folder`'s index.json, or a UserError naming the command that builds it."""
    path = Path(folder) / INDEX
    if not path.is_file():
        raise UserError(f"{folder}: no pairs cache here ({INDEX} is missing): build it with "
                        f"`flashdistill pairs RECIPE --out {folder}`")
    return path


class PairsCache:
    """The pairs of a folder (see the module docstring): `len`, `identity`, `get(indices)` -> (items, targets)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = index_path(self.folder)
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            self.identity, self.command = index["identity"], index["command"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
            raise UserError(f"{path}: not a pairs cache index ({one_line(err)})") from None
        self.rows: dict[int, tuple[Path, int, list]] = {}  # pair index -> (shard, row, item)
        for shard in sorted(self.folder.glob(SHARD_GLOB)):
            for row, (i, item) in enumerate(read_shard_items(shard)):
                self.rows[i] = (shard, row, item)
        self.indices = sorted(self.rows)
        self._handles: dict[Path, object] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, positions: list[int]) -> tuple[list[int], list[tuple[str, str, int]], torch.Tensor]:
        """The pairs at `positions` of the sorted pair indices: (pair indices, items, targets (B, C, H, W) fp32)."""
        indices = [self.indices[p] for p in positions]
        items, targets = [], []
        for i in indices:
            shard, row, item = self.rows[i]
            if shard not in self._handles:
                self._handles[shard] = safe_open(str(shard), framework="pt")
            targets.append(self._handles[shard].get_slice("x")[row:row + 1].float())
            items.append((item[0], item[1], int(item[2])))
        return indices, items, torch.cat(targets)

    def check_items(self, source) -> None:
        """Every pair's item is the one the training source holds under its key (data files edited since the pairs
        were built would pair a target with another prompt), or a UserError naming the first that is not."""
        for i in self.indices:
            task, category, index, tag = self.rows[i][2]
            try:
                text = source.text((task, category, int(index)))
            except (KeyError, IndexError):
                text = None
            if text is None or text_tag(text) != tag:
                raise UserError(f"{self.folder}: pair {i} ({task} {category} #{index}) was built from another item "
                                f"than the training data holds now; rebuild it with `{self.command}` into a new "
                                f"--out")


def read_shard_items(shard: Path) -> list[tuple[int, list]]:
    """(pair index, item) of every row of a shard, from its header; a damaged shard is a UserError naming it."""
    try:
        with safe_open(str(shard), framework="pt") as handle:
            items = json.loads(handle.metadata()["items"])
            indices = handle.get_tensor("index").tolist()
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise UserError(f"{shard}: damaged pairs shard ({one_line(err)[:160]}); move it aside and run the pairs "
                        f"command again, which samples its pairs anew") from None
    return list(zip(indices, items))


def write_shard(folder: Path, first: int, targets: torch.Tensor, indices: list[int], items: list[list]) -> Path:
    """One shard, atomically (temporary name, then rename)."""
    name = f"pairs-{first:09d}.safetensors"
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}-{name}"
    save_file({"x": targets.to(torch.float16).contiguous(), "index": torch.tensor(indices, dtype=torch.int64)},
              str(tmp), metadata={"items": json.dumps(items)})
    os.replace(tmp, folder / name)
    return folder / name


def write_index(folder: Path, identity: dict, command: str) -> dict:
    shards = {}
    for shard in sorted(folder.glob(SHARD_GLOB)):
        rows = read_shard_items(shard)
        shards[shard.name] = {"pairs": len(rows), "first": rows[0][0] if rows else None,
                              "sha256": file_digest(shard)}
    index = {"format": FORMAT, "identity": identity, "command": command,
             "pairs": sum(s["pairs"] for s in shards.values()), "shards": shards}
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}-{INDEX}"
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / INDEX)
    return index


def regression_distance(x: torch.Tensor, target: torch.Tensor, distance: str, critic=None, cond=None,
                        layers: tuple[int, ...] = (), eps: torch.Tensor | None = None, bf16: bool = False
                        ) -> torch.Tensor:
    """`mse` between the student's x0 and the targets, or `critic`: the mean squared difference of the critic's
    unit-normalised token features at `layers`, both images noised to FEATURE_T with the same noise `eps`."""
    if distance == "mse":
        return torch.nn.functional.mse_loss(x.float(), target.float())
    t = torch.full((len(x),), FEATURE_T, device=x.device)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, f_x = critic(interpolate(x, eps, t), t, cond, hidden_layer=layers)  # (B, L, N, D)
        with torch.no_grad():
            _, f_y = critic(interpolate(target, eps, t), t, cond, hidden_layer=layers)
    f_x, f_y = (torch.nn.functional.normalize(f.float(), dim=-1) for f in (f_x, f_y))
    return (f_x - f_y).pow(2).sum(-1).mean()


def student_x0(student, z: torch.Tensor, t0: float, cond, bf16: bool = False) -> torch.Tensor:
    """The student's first step from z at t0 (= 1): its x0, with a graph."""
    t = torch.full((len(z),), t0, device=z.device)
    with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=bf16):
        v = student(z, t, cond).float()
    return x0_from_v(z, t, v)
