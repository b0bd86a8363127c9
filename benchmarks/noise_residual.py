"""How much of a sampler's difference from a reference is its starting noise left in the image?

For every case two T2I bench folders share (same case file, so same prompt and seed), take d = x - x_ref in model
space ([-1, 1]) and the case's initial noise z (the first draw of `torch.Generator().manual_seed(seed)`, as the
pipelines draw it), fit d ≈ β·z by least squares, and report the mean β and the mean share of |d|² that β·z
explains.
A 1-step sampler that does not reproduce z exactly in v = z - x0 leaves a residual proportional to z (share well above
0); a grain of another origin leaves a share near 0.

    python benchmarks/noise_residual.py runs/levers/teacher-nfe50/b-t2i-50 runs/levers/D-fm0.5/b-t2i-1 \
        runs/levers/teacher-nfe1/b-t2i-1

The seeds are read from the case file the folders were benched on: the shipped T2I one, or the one given with --cases.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flashdistill.bench.cases import BUILTIN_CASES, load_cases
from flashdistill.bench.stats import scores
from flashdistill.errors import UserError, one_line


def image(folder: Path, case_id: str) -> np.ndarray:
    return np.asarray(Image.open(folder / "images" / f"{case_id}.png").convert("RGB"), np.float32) / 127.5 - 1


def residual(ref: Path, folder: Path, seeds: dict[str, int]) -> dict:
    betas, shares = [], []
    for case_id in scores(folder):
        if not (ref / "images" / f"{case_id}.png").is_file():
            continue
        d = image(folder, case_id) - image(ref, case_id)  # (H, W, 3)
        gen = torch.Generator().manual_seed(seeds[case_id])
        z = torch.randn((3, *d.shape[:2]), generator=gen).permute(1, 2, 0).numpy()
        beta = float((d * z).sum() / (z * z).sum())
        energy = float((d ** 2).sum())
        betas.append(beta)
        shares.append(1 - float(((d - beta * z) ** 2).sum()) / energy if energy > 0 else 1.0)
    if not betas:
        raise UserError(f"{folder}: no case in common with {ref}")
    return {"folder": str(folder), "cases": len(betas), "beta": round(float(np.mean(betas)), 4),
            "share_explained_by_z": round(float(np.mean(shares)), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="bench folder of the reference sampler (e.g. teacher@50)")
    parser.add_argument("folders", type=Path, nargs="+", help="bench folders to compare with it")
    parser.add_argument("--cases", type=Path, default=BUILTIN_CASES["t2i"], help="their case file (default: shipped)")
    args = parser.parse_args()
    try:
        seeds = {c.id: c.seed for c in load_cases(args.cases, "t2i")}
        for folder in args.folders:
            print(json.dumps(residual(args.reference, folder, seeds)))
    except (UserError, OSError, KeyError) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
