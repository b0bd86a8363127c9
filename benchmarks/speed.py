"""Sampling speed of a teacher and its distilled student, and the split of one distillation iteration's time.

    python benchmarks/speed.py --student runs/flash --out benchmarks/results/speed.json

Writes JSON with, measured in this one process (`flashdistill.quickstart.speed`):
- latency and throughput of the teacher at 50 NFE with CFG, the teacher at 4 NFE with CFG and the student at its 4
  NFE, at each `--batches` size (default 1 and 32): median of `--repeats` calls after one warm-up call;
- per batch size the measured speed-up of the student over teacher@50 and the ideal one from counting network
  passes (a guided step is two passes: 100 against 4, 25x);
- the seconds of one distillation iteration of `--recipe`, split into data, student, teachers and critic
  (skip with `--iterations 0`).
Absolute seconds depend on the machine and its load; compare the ratios, which are taken in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashdistill.distill.recipe import load_recipe
from flashdistill.models.text import TextEncoder
from flashdistill.pipeline import load_student_model, load_teacher
from flashdistill.quickstart.speed import compare, iteration_split
from flashdistill.runtime.logs import hardware

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", required=True, help="distillation run folder or student export")
    parser.add_argument("--teacher", default="teacher:base")
    parser.add_argument("--teacher-nfe", type=int, default=50)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "flash_4nfe.yaml"), help="for the iteration split")
    parser.add_argument("--iterations", type=int, default=6, help="timed distillation iterations (0: skip)")
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    args = parser.parse_args(argv)
    encoder = TextEncoder()
    batch = max(args.batches)
    teacher = load_teacher(args.teacher, encoder=encoder, batch_size=batch)
    student = load_student_model(args.student, encoder=encoder, batch_size=batch)
    few = len(student.spec.timesteps)
    tn = f"teacher@{args.teacher_nfe}"
    samplers = [(tn, teacher, args.teacher_nfe), (f"teacher@{few}", teacher, few), (f"student@{few}", student, few)]
    result = {"teacher": args.teacher, "student": args.student, "cfg_scale": teacher.spec.cfg_scale,
              **compare(samplers, args.batches, args.repeats, reference=tn, student=f"student@{few}")}
    if args.iterations > 0:
        recipe = load_recipe(args.recipe, ["eval.every=0", "run.device=cpu", "pairs.weight=0"])
        result["distill_iteration"] = {"recipe": args.recipe,
                                       **iteration_split(recipe, args.iterations, warmup=1, encoder=encoder)}
    result["hardware"] = hardware()
    result["command"] = "python benchmarks/speed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for r in result["ratios"]:
        print(f"batch {r['batch']}: student {r['measured_speedup']:.1f}x faster than {tn} (ideal "
              f"{r['ideal_speedup']:.0f}x)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
