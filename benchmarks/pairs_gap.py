"""Does a student regressed onto a pairs cache learn the teacher's noise-to-image map, or only its pairs?

    flashdistill pairs configs/flash.yaml --n 128 --nfe 16 --seed 1 --out runs/pairs16-seed1   # held-out pairs
    python benchmarks/pairs_gap.py configs/flash.yaml --trained runs/pairs16 --held-out runs/pairs16-seed1 \
        --student runs/b32/p3-s0 runs/s2/flashp-seed0 --n 128 --json benchmarks/results/pairs_gap.json

For each student (a run folder or export; `load_student` picks best/ first) and each cache, the mean squared
distance between the student's one-step image from a pair's noise and the teacher's many-step image of that noise
(the pairs term's MSE, `distill/pairs.py`), over the first --n pairs. The trained cache is the one the student
regressed onto; the held-out cache has other items and noises (another --seed). A student that learned the map
scores alike on both; one that memorised its pairs scores far lower on the trained cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from flashdistill.distill.export import load_student
from flashdistill.distill.families import family_for
from flashdistill.distill.pairs import PairsCache, pair_noise, student_x0
from flashdistill.distill.recipe import load_recipe


@torch.no_grad()
def pairs_mse(student, cache: PairsCache, source, n: int, batch: int = 32) -> float:
    """Mean over the first n pairs of the per-pair mean squared difference to the teacher's image."""
    total, count = 0.0, 0
    for start in range(0, min(n, len(cache)), batch):
        positions = list(range(start, min(start + batch, n, len(cache))))
        indices, keys, target = cache.get(positions)
        cond = source.items(keys).cond
        z = pair_noise(cache.identity["seed"], indices, source.shape)
        x0 = student_x0(student.model, z, student.timesteps[0], cond)
        total += (x0 - target).pow(2).flatten(1).mean(1).sum().item()
        count += len(positions)
    return total / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="the recipe the pairs were built from (its world and text cache)")
    parser.add_argument("--trained", type=Path, required=True, help="the pairs folder the students regressed onto")
    parser.add_argument("--held-out", type=Path, required=True, help="a pairs folder of other items and noises")
    parser.add_argument("--student", nargs="+", required=True, help="run folders or student exports")
    parser.add_argument("--n", type=int, default=128, help="pairs per cache (default 128)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    caches = {"trained": PairsCache(args.trained), "held_out": PairsCache(args.held_out)}
    rows = {}
    for path in args.student:
        student = load_student(path)
        source = family_for(recipe).source(recipe, args.trained, None, student.model.config)  # its text cache
        rows[path] = {name: round(pairs_mse(student, cache, source, args.n), 5) for name, cache in caches.items()}
        r = rows[path]
        print(f"{path}: MSE to the teacher's image {r['trained']:.4f} on trained pairs, {r['held_out']:.4f} on "
              f"held-out pairs ({r['held_out'] / r['trained']:.2f}x)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"recipe": args.recipe, "trained": str(args.trained),
                                         "held_out": str(args.held_out), "n": args.n, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
