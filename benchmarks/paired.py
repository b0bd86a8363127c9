"""Paired comparison of two bench runs on the same cases: mean score difference A - B with its standard error.

    python benchmarks/paired.py runs/results/t2i-runs_flash-nfe4 runs/results/t2i-teacher_base-nfe4

Both folders must come from `flashdistill bench` on the same case file; images are seeded per case, so case i of A
and case i of B share prompt and seed, and the per-case differences are paired. Prints one line (and writes JSON
with --out): n, mean difference, its standard error (stdev / sqrt n), its 95% t interval, and how many cases A
wins, ties and loses (the arithmetic lives in `flashdistill.bench.stats`, which the study runner shares).
A difference of more than about 2 standard errors is unlikely to be seed noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashdistill.bench.stats import paired, scores
from flashdistill.errors import UserError, one_line


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        result = {"a": str(args.a), "b": str(args.b), **paired(scores(args.a), scores(args.b))}
    except UserError as err:
        raise SystemExit(f"error: {one_line(err)}") from None
    print(f"{args.a} - {args.b}: {result['mean_diff']:+.3f} +- {result['stderr']:.3f} (n {result['n']}; "
          f"wins {result['wins']}, ties {result['ties']}, losses {result['losses']})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
