"""Paired comparison of two bench runs on the same cases: mean score difference A - B with its standard error.

    python benchmarks/paired.py runs/results/t2i-runs_flash-nfe4 runs/results/t2i-teacher_base-nfe4

Both folders must come from `flashdistill bench` on the same case file; images are seeded per case, so case i of A
and case i of B share prompt and seed, and the per-case differences are paired. Prints one line (and writes JSON
with --out): n, mean difference, its standard error (stdev / sqrt n), and how many cases A wins, ties and loses.
A difference of more than about 2 standard errors is unlikely to be seed noise.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def scores(folder: Path) -> dict[str, float]:
    path = folder / "cases.jsonl"
    if not path.is_file():
        raise SystemExit(f"error: {path}: not found (is {folder} a bench output folder?)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["id"]: r["score"] for r in rows if r.get("score") is not None}


def paired(a: dict[str, float], b: dict[str, float]) -> dict:
    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        raise SystemExit("error: fewer than 2 cases judged in both runs")
    diffs = [a[i] - b[i] for i in ids]
    return {"n": len(ids), "mean_diff": statistics.fmean(diffs),
            "stderr": statistics.stdev(diffs) / math.sqrt(len(diffs)),
            "wins": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {"a": str(args.a), "b": str(args.b), **paired(scores(args.a), scores(args.b))}
    print(f"{args.a} - {args.b}: {result['mean_diff']:+.3f} +- {result['stderr']:.3f} (n {result['n']}; "
          f"wins {result['wins']}, ties {result['ties']}, losses {result['losses']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
