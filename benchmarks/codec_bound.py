"""Why the embedded teachers work in pixel space: what spatial compression alone costs on T2I-Bench-mini.

    python benchmarks/codec_bound.py --n 40 --out benchmarks/results/codec_bound.json

Exact renders are area-downsampled by 2x and 4x (what a latent codec's spatial grid keeps) and bilinearly
upsampled back, then judged by the world judge. A learned codec adds channels and can do better than this linear
round trip, but it must first be trained (none can be downloaded) and its reconstruction error counts against every
image; the drop measured here, largest on text, is what a codec at that stride has to win back.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from flashdistill.bench.cases import load_cases
from flashdistill.bench.world_judge import WorldJudge
from flashdistill.bench.cases import BUILTIN_CASES
from flashdistill.world.render import render


def round_trip(img: np.ndarray, factor: int) -> np.ndarray:
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # (1, 3, H, W)
    if factor > 1:
        x = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, factor), scale_factor=factor,
                                            mode="bilinear", align_corners=False)
    return x[0].permute(1, 2, 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=40, help="T2I cases per category")
    parser.add_argument("--out", default="benchmarks/results/codec_bound.json")
    args = parser.parse_args()
    judge, cases = WorldJudge(), load_cases(BUILTIN_CASES["t2i"], "t2i", args.n)
    result = {"n_per_category": args.n, "rows": []}
    for factor in (1, 2, 4):
        scores = dict(judge.judge_t2i(cases, [round_trip(render(c.record, 32), factor) for c in cases]))
        per: dict[str, list[float]] = {}
        for i, case in enumerate(cases):
            per.setdefault(case.category, []).append(scores[i].score)
        row = {"stride": factor, **{k: round(float(np.mean(v)), 3) for k, v in per.items()},
               "average": round(float(np.mean([s.score for s in scores.values()])), 3)}
        result["rows"].append(row)
        print(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
