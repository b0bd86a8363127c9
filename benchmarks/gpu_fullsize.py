"""Full-size Qwen-Image DMD on one GPU with flashdistill's own code (issue 38): seconds per iteration eager and with
`run.compile: blocks`, model-FLOP utilisation, the student learning, memory at the recipe's batch 8, and FSDP2 on
CUDA (`torchrun --nproc_per_node=1`, NCCL) with and without `run.fsdp_offload`, each beside `flashdistill plan`.

THE ONE DEVICE COMMAND (a GPU session, ~8-9 min of its 15; the device tool sends the lead's checkout, so this file
must be merged there first). Once, in that checkout's root, fetch the wheels the device image lacks (it has torch,
transformers, accelerate and huggingface_hub, not diffusers or importlib_metadata, and an unknown peft):

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 peft==0.21.2 importlib_metadata==10.2.0

then `run` with carry [".whl"] and timeout_s 600:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site || exit; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_fullsize.py \
      --out $OUT/gpu_fullsize.json --budget 540

and commit what comes back as benchmarks/results/gpu_fullsize_<h100|h200>.json. The script keeps to `--budget`
seconds: a phase that would not fit is skipped and named in `skipped`, and the JSON is rewritten after every step
(a kill keeps what was measured). At tiny size on a CPU (tests/test_gpu_benchmark.py runs every phase with
`--compile-backend none`, the compiled phase restarting eager; `aot_eager` compiles through dynamo and AOTAutograd
without inductor's C++ builds, ~10 min on 2 cores; inductor itself takes longer):

    python benchmarks/gpu_fullsize.py --tiny --device cpu --resolution 64 --rank 4 --compile-backend aot_eager \
        --batch 2 --micro 1 --budget 3000 --out /tmp/g.json

What runs is the shipped recipe (`configs/qwen-image-flash.yaml`: roles.mode lora, rank 64, base + a specialized
rank-64 LoRA teacher, per-block checkpointing, bf16 autocast, a bf16 frozen base, fp32 adapters) through
`build_roles`, `FileSource` and `iteration.train_iteration`, on fullsize_random.py's stand-ins: the 20.43B
transformer with random unit-scale weights built on the GPU (why unit scale: that file's docstring) and a random
condition cache of the real shapes. This process writes the inputs and runs each group of phases in a process of its
own (so each starts with the whole GPU), merging their JSON. Phases (`phases`, each with median_s,
model_tflops_per_s, mfu_vs_989 and its rows):
1. `eager_b1`: batch-1 iterations at 1024², steps 0.. of the recipe's T2I:Edit 5:5, from a checkpoint written first.
2. `compiled_b1`: that checkpoint restored (the trainer's exact resume), every block compiled (models/compiled.py),
   the same steps again, compared row by row with eager (`vs_eager`), then more steps; the first compiled row holds
   the compilation (`first_iteration_s`).
3. `compiled_b8_m2`: batch 8 in micro-batches of 2 (the recipe's), all edit rows (the largest passes): peak memory.
4. `fsdp_b1`, `fsdp_offload_b1`: gpu_fullsize_fsdp.py under torchrun (see there).
The learning checks of fullsize_bench.py hold for every phase that ran; the exit code is 1 when one fails or the
eager phase did not run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts: as distill does

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from fullsize_bench import (Bench, build, change, iterate, learning, planned_peak, recipe_sets, snapshot,  # noqa: E402
                            summary)
from fullsize_random import matmul_tflops, tiny_config, write_inputs  # noqa: E402

COMPARED = ("loss", "loss_critic", "grad_norm", "grad_norm_critic", "dmd_grad_norm")


def record(bench: Bench, name: str, rows: list[dict], moved: dict | None, warm: int = 1, **extra) -> None:
    """A phase's rows, summary, learning checks and extras into the JSON."""
    phase = {**summary(rows, warm, bench.result.get("matmul_tflops")), **extra, "student_change": moved,
             "rows": rows}
    bench.result["failed_checks"] += learning(name, rows, moved)
    bench.result["phases"][name] = phase
    bench.note(name, **{k: v for k, v in phase.items() if k != "rows"})


def run_steps(bench: Bench, ctx, flops, steps: range) -> list[dict]:
    rows = []
    for step in steps:
        rows.append(iterate(bench, ctx, flops, step))
        bench.dump()
    return rows


def eager_and_compiled(bench: Bench, args, recipe, roles, ctx, flops) -> None:
    from flashdistill.distill import trainer
    from flashdistill.distill.layouts.build import transformers
    from flashdistill.distill.recipe import resume_fingerprint
    from flashdistill.models.compiled import compile_blocks

    start = bench.work / "start"
    trainer.save(ctx, start, 0, {"fingerprint": resume_fingerprint(recipe), "recipe": recipe.to_dict()})
    before = snapshot(roles.student)
    eager = run_steps(bench, ctx, flops, range(args.iters))
    record(bench, "eager_b1", eager, change(roles.student, before),
           planned_peak_gib=planned_peak(bench, recipe, 1, True))
    if args.compile_iters == 0 or bench.skip("compiled_b1", 2 * sum(r["step_time"] for r in eager) + 60):
        return
    trainer.restore_run(roles, recipe, start, True, ctx.dist)  # the eager phase's starting weights, exactly
    shutil.rmtree(start)
    before = snapshot(roles.student)
    t = time.perf_counter()
    if args.compile_backend != "none":  # none: the same restart, eager (proves the restart is exact)
        compile_blocks(transformers(roles), bench.device, args.compile_backend)
        recipe.run.compile = "blocks"
    rows = run_steps(bench, ctx, flops, range(args.iters + args.compile_iters))
    same = [{key: (c[key] - e[key]) / abs(e[key]) if e[key] else c[key] - e[key] for key in COMPARED}
            for c, e in zip(rows, eager)]
    speed = [e["step_time"] / c["step_time"] for c, e in zip(rows[1:], eager[1:])]
    name = "compiled_b1" if recipe.run.compile == "blocks" else "restarted_b1"
    record(bench, name, rows, change(roles.student, before), first_iteration_s=rows[0]["step_time"],
           setup_s=time.perf_counter() - t - sum(r["step_time"] for r in rows), vs_eager_relative=same,
           speedup_same_steps=speed, backend=args.compile_backend,
           planned_peak_gib=planned_peak(bench, recipe, 1, True))


def batch8(bench: Bench, args, recipe, roles, ctx) -> None:
    """The recipe's global batch in its micro-batches, all edit rows (the largest grad passes): peak memory."""
    from fullsize_random import FlopCounter

    from flashdistill.distill import iteration

    flops = FlopCounter(roles.student.base.transformer)
    recipe.dmd.batch_size, recipe.run.micro_batch, recipe.tasks.ratio = args.batch, args.micro, "0:1"
    ctx = iteration.build_context(recipe, roles, ctx.dist, bench.work / "run", None)
    before, rows = snapshot(roles.student), []
    for i in range(args.batch_iters):
        if rows and bench.skip(f"compiled_b{args.batch}_m{args.micro} iteration {i + 1}", rows[-1]["step_time"]):
            break
        rows.append(iterate(bench, ctx, flops, 1000 + i))
    flops.handle.remove()
    name = f"{'compiled' if recipe.run.compile == 'blocks' else 'eager'}_b{args.batch}_m{args.micro}"
    record(bench, name, rows, change(roles.student, before), warm=1 if len(rows) > 1 else 0, ratio="0:1",
           planned_peak_gib=planned_peak(bench, recipe, args.micro, True))


def child(bench: Bench, name: str, cmd: list[str], out: Path) -> dict | None:
    """Run a phase's process for what is left of the budget (its output streamed; its GPU memory ends with it) and
    merge the JSON it wrote."""
    bench.note(f"{name} started", command=" ".join(cmd[1:]))
    try:
        code = subprocess.run(cmd, timeout=max(bench.left(), 30)).returncode
        if code != 0:
            bench.result["errors"].append(f"{name}: exit code {code} (its output is above)")
    except subprocess.TimeoutExpired:
        bench.result["errors"].append(f"{name}: stopped at the budget")
    if not out.is_file():
        return None
    worker = json.loads(out.read_text())
    bench.result["phases"].update(worker["phases"])
    for key in ("errors", "skipped", "failed_checks"):
        bench.result[key] += worker.get(key, [])
    bench.note(f"{name} done")
    return worker


def torchrun_phase(bench: Bench, args, name: str, extra: list[str]) -> None:
    """gpu_fullsize_fsdp.py under `torchrun --nproc_per_node=1`."""
    out = bench.work / f"{name}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           str(HERE / "gpu_fullsize_fsdp.py"), "--name", name, "--work", str(bench.work), "--out", str(out),
           "--device", args.device, "--resolution", str(args.resolution), "--rank", str(args.rank),
           "--iters", str(args.fsdp_iters), "--budget", str(bench.left() - 10), "--set", *args.set, *extra]
    child(bench, name, cmd, out)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the tiny folder's transformer config (CPU smoke test)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--budget", type=float, default=540, help="seconds for everything (phases that do not fit are "
                                                             "skipped)")
    p.add_argument("--iters", type=int, default=3, help="eager batch-1 iterations, also run compiled")
    p.add_argument("--compile-iters", type=int, default=3, help="compiled iterations after those (0: no compile)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend; none: the compiled phase "
                                                                  "restarts eager (the CPU test)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--batch-iters", type=int, default=2, help="iterations at --batch / --micro (0: none)")
    p.add_argument("--fsdp-iters", type=int, default=3, help="iterations of each torchrun phase (0: none)")
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides for every phase")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--single", action="store_true", help="(internal) the single-process phases in --work")
    return p.parse_args(argv)


def single(bench: Bench, args) -> None:
    """The phases of one plain process: eager and compiled batch 1, batch 8 in micro-batches."""
    bench.result["matmul_tflops"] = matmul_tflops(bench.device)
    sets = recipe_sets(bench.work, bench.device, args.resolution, args.rank, ["run.compile=none", *args.set])
    recipe, roles, ctx, flops = build(bench, bench.work, sets, bench.work / "run")
    eager_and_compiled(bench, args, recipe, roles, ctx, flops)
    flops.handle.remove()
    if args.batch_iters and not bench.skip("batch 8", 4 * bench.result["phases"]["eager_b1"]["median_s"]):
        batch8(bench, args, recipe, roles, ctx)
    bench.result["compile"] = recipe.run.compile


def phases(bench: Bench, args, argv: list[str]) -> None:
    """The inputs, then each phase in a process of its own: the single-process phases, then the torchrun ones."""
    config = tiny_config() if args.tiny else json.loads(
        (HERE.parent / "src/flashdistill/assets/qwen-image/transformer/config.json").read_text())
    write_inputs(bench.work, config, args.rank, torch.device("cpu"))
    bench.note("inputs_written")
    out = bench.work / "single.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--single", "--work", str(bench.work), "--out",
           str(out), "--budget", str(bench.left() - 5)]  # argparse keeps the last of a repeated option
    first = child(bench, "single", cmd, out) or {}
    for key in ("device", "frozen_dtype", "matmul_tflops", "compile"):
        bench.result[key] = first.get(key)
    if args.fsdp_iters:
        compiled = first.get("compile") or "none"
        torchrun_phase(bench, args, "fsdp_b1", ["--compile", compiled])
        torchrun_phase(bench, args, "fsdp_offload_b1", ["--compile", compiled, "--offload", "--resume", "--export"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    bench = Bench(args.out, args.device if args.single else "cpu", args.budget)  # the parent never touches the GPU
    bench.result.update(failed_checks=[], budget_s=args.budget)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        bench.work = Path(args.work) if args.single else Path(tmp)
        try:
            single(bench, args) if args.single else phases(bench, args, argv)
        except Exception:  # noqa: BLE001 - a benchmark reports what broke, with what it measured before
            import traceback

            bench.result["errors"].append(traceback.format_exc()[-4000:])
            print(traceback.format_exc(), file=sys.stderr)
        bench.dump()
    ok = "eager_b1" in bench.result["phases"] and not bench.result["failed_checks"]
    print(f"wrote {args.out}" + ("" if ok else f"; FAILED: {bench.result['failed_checks'] or 'no eager phase'}"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
