"""FSDP2 at full size, the torchrun phases of benchmarks/gpu_fullsize.py, which runs this file as

    torchrun --standalone --nproc_per_node=1 benchmarks/gpu_fullsize_fsdp.py --name fsdp_b1 --work DIR --out J ...

in the random pipeline folder it wrote (`--work`): NCCL on a GPU (gloo on a CPU), the shipped recipe with
`run.parallel: fsdp` (`--offload`: and `run.fsdp_offload: true`, the shards and AdamW in pinned host memory) and
`run.compile` as gpu_fullsize's compiled phase ended. It records, as fullsize_bench.py does for the other phases:
- batch-1 iterations at the recipe's T2I:Edit 5:5 (median_s, model_tflops_per_s, mfu_vs_989, peak memory beside the
  planner's prediction for this layout, the student learning);
- `--resume`: a sharded checkpoint after them (seconds, GiB), one more step, that checkpoint restored into the live
  shards by the trainer's resume (`restore_run`) and the same step again: `resume_relative` is the difference of
  their losses and gradient norms (0 for an exact resume; GPU kernels need not be bitwise deterministic);
- `--export`: the EMA student gathered from the shards and exported by the trainer (the adapter in diffusers'
  format and the merged transformer, 38 GiB at full size), timed, its size, then deleted.
Everything left out for `--budget` is named in `skipped`. Tests: tests/test_gpu_benchmark.py (tiny, CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from fullsize_bench import (GIB, Bench, build, change, iterate, learning, planned_peak, recipe_sets, snapshot,  # noqa: E402
                            summary)


def size_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / GIB


def resume_check(bench: Bench, ctx, flops, phase: dict, step: int) -> None:
    """Save after `step` iterations, run step `step`, restore the checkpoint, run it again."""
    from flashdistill.distill import trainer
    from flashdistill.distill.recipe import resume_fingerprint

    run = bench.work / f"run-{phase['name']}"
    recipe = ctx.recipe
    start = time.perf_counter()
    trainer.save(ctx, run, step, {"fingerprint": resume_fingerprint(recipe), "recipe": recipe.to_dict()})
    phase["checkpoint"] = {"seconds": time.perf_counter() - start, "gib": size_gib(run / "checkpoint")}
    first = iterate(bench, ctx, flops, step)
    start = time.perf_counter()
    resumed_at, _ = trainer.restore_run(ctx.roles, recipe, run, True, ctx.dist)
    phase["resume"] = {"seconds": time.perf_counter() - start, "from_iteration": resumed_at}
    again = iterate(bench, ctx, flops, step)
    phase["resume_relative"] = {k: (again[k] - first[k]) / abs(first[k]) if first[k] else again[k] - first[k]
                                for k in ("loss", "loss_critic", "grad_norm", "grad_norm_critic", "dmd_grad_norm")}
    phase["rows_resume"] = [first, again]
    bench.note("resumed", **phase["resume_relative"])


def export(bench: Bench, ctx, phase: dict, full_size: bool) -> None:
    """The trainer's export of the gathered EMA student (timed), then deleted."""
    from flashdistill.distill.trainer import DistillJob

    folder = bench.work / f"student-{phase['name']}"
    free = shutil.disk_usage(bench.work).free / GIB
    if full_size and free < 48:  # the merged transformer is 38 GiB
        bench.result["skipped"].append(f"{phase['name']} export: {free:.0f} GiB of disk free, it needs ~40")
        return
    start = time.perf_counter()
    DistillJob(ctx, bench.work, None, None, None).export(folder, {"weights": "ema", "benchmark": True})
    phase["export"] = {"seconds": time.perf_counter() - start, "gib": size_gib(folder),
                       "files": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())}
    shutil.rmtree(folder)
    bench.note("exported", **phase["export"])


def measure(bench: Bench, args) -> None:
    extra = ["run.parallel=fsdp", f"run.compile={args.compile}"] + (["run.fsdp_offload=true"] if args.offload else [])
    sets = recipe_sets(bench.work, bench.device, args.resolution, args.rank, extra + args.set)
    recipe, roles, ctx, flops = build(bench, bench.work, sets, bench.work / f"run-{args.name}")
    before, rows = snapshot(roles.student), []
    for step in range(args.iters):
        if rows and bench.skip(f"{args.name} iteration {step + 1}", rows[-1]["step_time"] + 5):
            break
        rows.append(iterate(bench, ctx, flops, step))
        bench.dump()
    phase = {"name": args.name, **summary(rows, 1), "offload": args.offload, "compile": args.compile,
             "planned_peak_gib": planned_peak(bench, recipe, 1, True), "student_change": change(roles.student, before),
             "rows": rows}
    bench.result["phases"][args.name] = phase
    bench.result["failed_checks"] += learning(args.name, rows, phase["student_change"])
    bench.note(args.name, **{k: v for k, v in phase.items() if not k.startswith("rows")})
    if args.resume and not bench.skip(f"{args.name} resume", 3 * phase["median_s"] + 60):
        resume_check(bench, ctx, flops, phase, len(rows))
    full_size = recipe.roles.lora_rank >= 64 and bench.cuda
    if args.export and not bench.skip(f"{args.name} export", 150 if full_size else 5):
        export(bench, ctx, phase, full_size)


def main(argv=None) -> int:
    from flashdistill.runtime.dist import teardown_distributed

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--name", "--work", "--out"):
        p.add_argument(flag, required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--budget", type=float, default=300)
    p.add_argument("--compile", default="none")
    p.add_argument("--offload", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", action="store_true")
    p.add_argument("--set", nargs="*", default=[])
    args = p.parse_args(argv)
    bench = Bench(args.out, args.device, args.budget)
    bench.work, bench.result["failed_checks"] = Path(args.work), []
    try:
        measure(bench, args)
    except Exception:  # noqa: BLE001 - the phase reports what broke, with what it measured before
        import traceback

        bench.result["errors"].append(f"{args.name}: {traceback.format_exc()[-4000:]}")
        print(traceback.format_exc(), file=sys.stderr)
    bench.dump()
    return teardown_distributed(0 if not bench.result["errors"] else 1)


if __name__ == "__main__":
    sys.exit(main())
