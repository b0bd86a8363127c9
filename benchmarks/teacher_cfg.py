"""Choose a teacher's classifier-free guidance scale on the `val` split (never the bench), with the world judge.

    python benchmarks/teacher_cfg.py --model teacher:base --cfg 1 2 3 4 5 6 --n 10 --out benchmarks/results/cfg_base.json

For each scale, runs both benches on `n` val cases per category at `--nfe` steps and writes the averages (and the
wall time per image, so scales are compared at equal cost: every guided step is two network passes) to JSON.
The best scale by the mean of the two bench averages is printed; record it in the teacher's teacher.json
(`sampling.cfg_scale`) so that `teacher:NAME` samples with it by default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases
from flashdistill.bench.models import load_model
from flashdistill.bench.runner import run_bench
from flashdistill.bench.world_judge import WorldJudge


def sweep(model_spec: str, scales: list[float], n: int, nfe: int) -> dict:
    judge = WorldJudge()
    cases = {"t2i": t2i_bench_cases(n, "val"), "edit": edit_bench_cases(n, "val")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in scales:
            model = load_model(model_spec, cfg_scale=w)
            row = {"cfg_scale": w}
            for bench, bench_cases in cases.items():
                start = time.perf_counter()
                res = run_bench(bench, model, judge, bench_cases, Path(tmp) / f"{bench}-{w}", nfe, f"val:{n}")
                row[bench] = res["average"]
                row[f"{bench}_per_category"] = res["per_category"]
                row[f"{bench}_s_per_image"] = round((time.perf_counter() - start) / len(bench_cases), 4)
            row["mean"] = round((row["t2i"] + row["edit"]) / 2, 3)
            rows.append(row)
            print(f"cfg {w:g}: T2I {row['t2i']:.3f}  Edit {row['edit']:.3f}", file=sys.stderr)
    best = max(rows, key=lambda r: r["mean"])
    return {"model": model_spec, "nfe": nfe, "split": "val", "n_per_category": n, "rows": rows,
            "best_cfg_scale": best["cfg_scale"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="teacher:base")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    parser.add_argument("--n", type=int, default=10, help="val cases per category")
    parser.add_argument("--nfe", type=int, default=50)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = sweep(args.model, args.cfg, args.n, args.nfe)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"best cfg scale {result['best_cfg_scale']:g} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
