"""Cost of one distillation iteration, split into its parts, and the two-teacher / one-teacher cost ratio.

    python benchmarks/distill_cost.py --out runs/bench/distill_cost.json                  (small preset, batch 8)
    python benchmarks/distill_cost.py --teachers runs/teacher_base/teacher runs/teacher_specialized/teacher

Two recipes run the same iterations (same batches, same student step k, same categories), interleaved A/B/A/B so
that drift in a shared machine's speed hits both alike:
- `two_teachers`: RECIPE as written (default configs/flash_4nfe.yaml: step-wise guidance from base and specialized);
- `one_teacher`: the same recipe with only `base` (guidance omitted: λ = 1 on base everywhere).
Parts per iteration (seconds, from the trainer's own timers): data (batch + text), student (backward simulation,
generator loss, backward, AdamW, EMA), teachers (real score with CFG), critic (fake score + critic updates).
Without --teachers the teachers are freshly initialised models of --preset (cost does not depend on the weights).
Writes JSON with per-part means and medians, the ratio of median iteration times, and the hardware.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.layouts.build import build_roles
from flashdistill.runtime.dist import Dist
from flashdistill.distill.iteration import build_context, train_iteration
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.text import TextEncoder
from flashdistill.quickstart.speed import summarize_parts
from flashdistill.teacher.config import PRESETS
from flashdistill.runtime.logs import hardware

ROOT = Path(__file__).resolve().parents[1]


def fresh_teachers(folder: Path, preset: str) -> tuple[Path, Path]:
    paths = []
    for seed, name in enumerate(("base", "specialized")):
        torch.manual_seed(seed)
        FlowModel(PRESETS[preset]()).save_pretrained(folder / name)
        paths.append(folder / name)
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default=str(ROOT / "configs" / "flash_4nfe.yaml"))
    parser.add_argument("--teachers", nargs=2, metavar=("BASE", "SPECIALIZED"), default=None)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=6, help="measured iterations per recipe")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared CPU)")
    parser.add_argument("--text-cache", default=None, help="embedding cache folder (default: a temporary one)")
    parser.add_argument("--out", default="runs/bench/distill_cost.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="distill-cost-"))
    base, spec = (Path(p) for p in args.teachers) if args.teachers else fresh_teachers(tmp, args.preset)
    # the DMD iteration's parts; the paired regression (its own cache, pairs.weight) is left out
    common = [f"dmd.batch_size={args.batch_size}", f"run.text_cache={args.text_cache or tmp / 'text-cache'}",
              "eval.every=0", "run.device=cpu", "pairs.weight=0"]
    recipes = {
        "two_teachers": load_recipe(args.recipe, [f"teachers.base={base}", f"teachers.specialized={spec}", *common]),
        "one_teacher": load_recipe(args.recipe, [f"teachers={{base: {base}}}", "guidance=null", *common]),
    }
    encoder = TextEncoder()
    contexts = {name: build_context(r, build_roles(r, Dist()), Dist(), tmp / name, encoder) for name, r in recipes.items()}
    rows: dict[str, list[dict]] = {name: [] for name in recipes}
    start = time.perf_counter()
    for step in range(args.warmup + args.iterations):
        for name, ctx in contexts.items():  # interleaved: the same iteration under both recipes, back to back
            metrics = train_iteration(ctx, step)
            if step >= args.warmup:
                rows[name].append(metrics)
        if step >= args.warmup:
            print(f"iteration {step}: " + ", ".join(f"{n} {rows[n][-1]['step_time']:.2f} s" for n in rows),
                  file=sys.stderr)
    parts = {name: summarize_parts(r) for name, r in rows.items()}
    spec_iters = sum("specialized" in r["teachers_run"] for r in rows["two_teachers"])
    result = {
        "recipe": args.recipe, "preset": args.preset, "batch_size": args.batch_size, "iterations": args.iterations,
        "warmup": args.warmup, "threads": args.threads, "teachers": "given" if args.teachers else "fresh init",
        "params_student": contexts["one_teacher"].roles.student.num_params(),
        "critic_updates": recipes["two_teachers"].critic.updates, "parts_s": parts,
        "ratio_two_over_one_median": round(parts["two_teachers"]["step_time"]["median"]
                                           / parts["one_teacher"]["step_time"]["median"], 3),
        "ratio_two_over_one_mean": round(parts["two_teachers"]["step_time"]["mean"]
                                         / parts["one_teacher"]["step_time"]["mean"], 3),
        "iterations_where_specialized_ran": spec_iters, "ks": [r["k"] for r in rows["two_teachers"]],
        "wall_s": round(time.perf_counter() - start, 1), "hardware": hardware(),
        "command": "python benchmarks/distill_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("parts_s", "ratio_two_over_one_median", "ratio_two_over_one_mean")},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
