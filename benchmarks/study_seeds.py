"""How many training seeds a study needs: from a finished study's `study.json`, per finding the spread of its
per-seed differences and the seeds at which its 95% interval would be narrower than a given difference.

    python benchmarks/study_seeds.py runs/studies/task-mixture [more study folders] [--resolve 0.1] [--out FILE.json]

For a finding with per-seed differences d_1..d_n (sd s), the interval's half-width at m seeds is
t_{m-1} · s / sqrt(m) (the same t interval as the report's, `flashdistill/bench/stats.py`), assuming the spread
stays what these n seeds measured. The table gives, per finding: n, the measured difference and interval, s, and the
smallest m (up to 100) whose half-width is at most --resolve (a difference of that size would then exclude 0), and
the smallest m whose half-width is below the measured |mean| (what it would take to resolve the effect as
measured). Arms' own seed-to-seed sd per bench column is printed too (the spread the issue asks about).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flashdistill.bench.stats import LEVEL, t_quantile  # noqa: E402

MAX_SEEDS = 100


def seeds_needed(sd: float, half: float) -> int | None:
    """Smallest m >= 2 with t_{m-1} · sd / sqrt(m) <= half; None beyond MAX_SEEDS (or no spread measured)."""
    if not (math.isfinite(sd) and half > 0):
        return None
    for m in range(2, MAX_SEEDS + 1):
        if t_quantile(LEVEL, m - 1) * sd / math.sqrt(m) <= half:
            return m
    return None


def finding_rows(study: dict, resolve: float) -> list[dict]:
    rows = []
    for f in study["findings"]:
        diffs = [v for v in f["per_seed"].values() if v is not None and math.isfinite(v)]
        sd = statistics.stdev(diffs) if len(diffs) >= 2 else float("nan")
        mean = f["interval"]["mean"]
        rows.append({"study": study["study"], "key": f["key"], "n": len(diffs), "mean": mean,
                     "half": f["interval"]["half"], "verdict": f["verdict"], "sd": sd,
                     "seeds_for_resolve": seeds_needed(sd, resolve),
                     "seeds_for_measured": seeds_needed(sd, abs(mean)) if mean is not None else None})
    return rows


def arm_spreads(study: dict) -> list[dict]:
    """Per arm and bench average, the sd of its seeds' scores (from the runs' bench averages)."""
    out = []
    for arm, seeds in study["runs"].items():
        for bench in next(iter(seeds.values()))["bench"]:
            values = [run["bench"][bench]["average"] for run in seeds.values()]
            out.append({"study": study["study"], "arm": arm, "bench": bench, "n": len(values),
                        "sd": statistics.stdev(values) if len(values) >= 2 else float("nan")})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="+", type=Path, help="study folders (each holding study.json)")
    parser.add_argument("--resolve", type=float, default=0.1, help="the difference to resolve (default 0.1)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if not args.resolve > 0:
        print(f"--resolve must be > 0, got {args.resolve}", file=sys.stderr)
        return 2
    findings, spreads = [], []
    for folder in args.studies:
        path = folder / "study.json"
        try:
            study = json.loads(path.read_text(encoding="utf-8"))
            findings += finding_rows(study, args.resolve)
            spreads += arm_spreads(study)
        except (OSError, ValueError, KeyError, TypeError, StopIteration) as err:
            print(f"{path}: not a finished study's report ({type(err).__name__}: {err})", file=sys.stderr)
            return 2

    def cell(m):
        return "-" if m is None else str(m)

    print(f"| study | finding | n | difference ± 95% CI | verdict | sd of per-seed differences | "
          f"seeds for ± {args.resolve:g} | seeds to resolve the measured difference |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for r in findings:
        print(f"| {r['study']} | {r['key']} | {r['n']} | {r['mean']:+.3f} ± {r['half']:.3f} | {r['verdict']} | "
              f"{r['sd']:.3f} | {cell(r['seeds_for_resolve'])} | {cell(r['seeds_for_measured'])} |")
    print()
    print("| study | arm | bench | seeds | sd of the seeds' averages |")
    print("|---|---|---|---:|---:|")
    for r in spreads:
        print(f"| {r['study']} | {r['arm']} | {r['bench']} | {r['n']} | {r['sd']:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"resolve": args.resolve, "level": LEVEL, "findings": findings,
                                        "arm_spreads": spreads}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
