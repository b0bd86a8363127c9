"""The full-size Qwen-Image DMD iteration on one GPU, measured with flashdistill's own code, beside the planner.

    python benchmarks/gpu_fullsize.py --out benchmarks/results/gpu_fullsize.json            # a GPU, ~5 min
    python benchmarks/gpu_fullsize.py --tiny --device cpu --out /tmp/g.json                 # CPU smoke (a test)

The random stand-ins (weights, condition cache, LoRA teacher, FLOP counter) are in benchmarks/fullsize_random.py.

What runs is the shipped recipe (`configs/qwen-image-flash.yaml`: roles.mode lora, rank 64, base + a specialized
rank-64 LoRA teacher, per-block checkpointing, bf16 autocast, roles.frozen_dtype auto = bf16 on CUDA) through
`build_roles`, `FileSource` and `iteration.train_iteration`. Two things are replaced, nothing else:
- the transformer's weights: `QwenImageFolder.read_transformer` builds the shipped 20.43B config (or a tiny one
  with --tiny) with default initialisation straight in the frozen dtype on the device, instead of reading 40 GB;
- the condition cache: random tensors of the real shapes (prompt 120 x 3584, negative 8, VL 300, source latents
  16 x 128 x 128), so no text encoder or VAE is loaded.
The specialized teacher is a real rank-64 LoRA file in diffusers' format (random, bf16), loaded by peft.

It writes, as it goes (a kill keeps what was measured): the adapters' parameters and dtypes, memory at rest, a
matmul's bf16 TFLOP/s, batch-1 iterations at 1024² (seconds and per part, peak memory, model FLOPs and MFU), then for
each `--memory` case (global batch : micro-batch : task ratio, one or more iterations) the peak allocated and
reserved memory beside `flashdistill plan`'s prediction for the same workload, a checkpoint save, and optionally a
profile of one iteration (`--profile`). Model FLOPs: every transformer call is counted from its real token counts
(2 x per-token linear parameters of each stream x tokens + 4 x L x D x S² attention); a grad pass counts twice
(forward + input-gradient backward; frozen weights get no weight gradient), recomputation not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # before CUDA starts: as distill does

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"

from fullsize_random import TOKENS, FlopCounter, matmul_tflops, random_family, tiny_config, write_inputs  # noqa: E402
GIB = 2**30


class Bench:
    """The measurement, written to JSON after every phase."""

    def __init__(self, args):
        self.args, self.t0 = args, time.perf_counter()
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        import diffusers

        self.result = {"command": " ".join(sys.argv), "torch": torch.__version__, "diffusers": diffusers.__version__,
                       "device": torch.cuda.get_device_name(0) if self.cuda else "cpu", "phases": {},
                       "timing": [], "memory": [], "errors": []}

    def dump(self) -> None:
        self.result["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        Path(self.args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(self.args.out).write_text(json.dumps(self.result, indent=1) + "\n")

    def memory(self) -> dict:
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        return {"allocated_gib": round(torch.cuda.memory_allocated() / GIB, 2),
                "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2)}

    def phase(self, name: str, **extra) -> None:
        self.result["phases"][name] = {"t_s": round(time.perf_counter() - self.t0, 1), **self.memory(), **extra}
        print(f"[{self.result['phases'][name]['t_s']:7.1f} s] {name} {self.memory()} {extra or ''}", flush=True)
        self.dump()

    def late(self) -> bool:
        return time.perf_counter() - self.t0 > self.args.deadline


def build(bench: Bench, work: Path):
    """Recipe, family, roles and the trainer's context, as `flashdistill distill` builds them."""
    from flashdistill.distill import iteration
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.runtime.dist import setup_distributed

    a = bench.args
    config = tiny_config() if a.tiny else json.loads((ROOT / "src/flashdistill/assets/qwen-image/transformer/"
                                                              "config.json").read_text())
    write_inputs(work, config, a.rank, bench.device)
    bench.phase("inputs_written")
    sets = [f"teachers.base={work}", f"teachers.specialized={work / 'specialized.safetensors'}",
            f"data.prompts={work / 'prompts.jsonl'}", f"data.edits={work / 'edits.jsonl'}",
            f"run.text_cache={work / 'cache'}", "dmd.batch_size=1", f"data.resolution={a.resolution}",
            f"roles.lora_rank={a.rank}", f"run.device={bench.device.type}", "dmd.iterations=100000",
            f"dmd.bf16={str(bench.cuda).lower()}", *a.set]
    recipe = load_recipe(RECIPE, sets)
    dist = setup_distributed(recipe.run.device, recipe.dmd.batch_size)
    family = random_family(work, a.resolution, dist.device)
    t = time.perf_counter()
    roles = build_roles(recipe, dist, family)
    adapters = {role: {"params": sum(p.numel() for p in getattr(roles, role).parameters()),
                       "dtypes": sorted({str(p.dtype) for p in getattr(roles, role).parameters()})}
                for role in ("student", "critic", "ema")}
    base = roles.student.base.transformer
    bench.result["frozen_dtype"] = str(next(base.parameters()).dtype)
    from flashdistill.distill.layouts.plan import count, meta_transformer

    bench.counts = count(meta_transformer(work / "transformer" / "config.json"), a.rank)
    frozen = 2 if bench.result["frozen_dtype"] == "torch.bfloat16" else 4
    resident = (bench.counts.params + bench.counts.lora_params) * frozen + 3 * 4 * bench.counts.lora_params
    bench.phase("roles_built", seconds=round(time.perf_counter() - t, 1), adapters=adapters,
                planned_at_rest_gib=round(resident / GIB, 2))
    ctx = iteration.build_context(recipe, roles, dist, work / "run", None)
    return recipe, roles, ctx, FlopCounter(base)


def planned_peak(bench: Bench, recipe, micro: int, edits: bool) -> float:
    """`flashdistill plan`'s peak allocated GiB for this recipe and workload (the random cache's token counts)."""
    from flashdistill.distill.layouts import peak

    work = peak.Workload(micro_batch=micro, resolution=recipe.data.resolution, edits=edits,
                         text_tokens=TOKENS["text"], vl_tokens=TOKENS["vl"],
                         checkpointing=recipe.roles.gradient_checkpointing)
    s = peak.settings_from_recipe(recipe, 1)
    frozen = 2 if bench.result["frozen_dtype"] == "torch.bfloat16" else 4
    return round(peak.predict(bench.counts, s.mode, s.teachers, work, 1, frozen).total / GIB, 2)


def iterate(bench: Bench, ctx, flops: FlopCounter, step: int) -> dict:
    from flashdistill.distill import iteration

    if bench.cuda:
        torch.cuda.reset_peak_memory_stats()
    flops.flops = 0.0
    m = iteration.train_iteration(ctx, step)
    row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in m.items()}
    row["model_flop"] = flops.flops
    row["model_tflop"] = round(flops.flops / 1e12, 2)
    row["model_tflops_per_s"] = round(flops.flops / 1e12 / m["step_time"], 1)
    row.update(bench.memory())
    return row


def timing(bench: Bench, recipe, ctx, flops) -> None:
    """Batch-1 iterations at the recipe's task ratio; the first is a warm-up."""
    for step in range(bench.args.iters):
        row = iterate(bench, ctx, flops, step)
        bench.result["timing"].append(row)
        print(json.dumps({k: row[k] for k in ("step", "k", "edit_rows", "step_time", "time_student",
                                               "time_teachers", "time_critic") if k in row}), flush=True)
        bench.dump()
        if bench.late():
            bench.result["errors"].append(f"deadline: timing stopped after {step + 1} iterations")
            return
    rows = bench.result["timing"][1:] or bench.result["timing"]
    times = [r["step_time"] for r in rows]
    summary = {"median_s": round(statistics.median(times), 2), "n": len(times),
               "median_t2i_s": _median([r["step_time"] for r in rows if r["edit_rows"] == 0]),
               "median_edit_s": _median([r["step_time"] for r in rows if r["edit_rows"] > 0]),
               "model_tflops_per_s": round(sum(r["model_flop"] for r in rows) / 1e12 / sum(times), 1),
               "planned_peak_gib": planned_peak(bench, recipe, 1, True)}
    if bench.cuda:
        summary["peak_allocated_gib"] = max(r["peak_allocated_gib"] for r in rows)
        summary["peak_reserved_gib"] = max(r["peak_reserved_gib"] for r in rows)
        peak = bench.result.get("matmul_tflops")
        summary["mfu_vs_matmul"] = round(summary["model_tflops_per_s"] / peak, 3) if peak else None
        summary["mfu_vs_989"] = round(summary["model_tflops_per_s"] / 989, 3)
    bench.result["timing_summary"] = summary
    bench.phase("timing_done", **summary)


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def memory_cases(bench: Bench, recipe, roles, flops) -> None:
    """Each (global batch, micro-batch, task ratio): iterations from fresh peak statistics, beside the plan."""
    from flashdistill.distill import iteration

    for batch, micro, ratio in bench.args.memory:
        if bench.late():
            bench.result["errors"].append(f"deadline: memory case {batch}/{micro}/{ratio} not run")
            break
        recipe.dmd.batch_size, recipe.dmd.micro_batch, recipe.tasks.ratio = batch, micro, ratio
        ctx = iteration.build_context(recipe, roles, bench.ctx.dist, bench.work / "run", None)
        rows = [iterate(bench, ctx, flops, 1000 + i) for i in range(bench.args.memory_iters)]
        case = {"batch": batch, "micro_batch": micro, "ratio": ratio, "iterations": rows,
                "planned_peak_gib": planned_peak(bench, recipe, micro, recipe.tasks.weights()[1] > 0)}
        if bench.cuda:
            case["peak_allocated_gib"] = max(r["peak_allocated_gib"] for r in rows)
            case["peak_reserved_gib"] = max(r["peak_reserved_gib"] for r in rows)
        bench.result["memory"].append(case)
        bench.phase(f"memory_{batch}_{micro}_{ratio}", **{k: v for k, v in case.items() if k != "iterations"})


def sample_time(bench: Bench, recipe, roles) -> None:
    """Seconds of one 4-step sample of the EMA student at batch 1 (what a training-time eval costs per image)."""
    from flashdistill.conditioning import Cond
    from flashdistill.sampling import few_step_sample

    side = recipe.data.resolution // 8
    gen = torch.Generator().manual_seed(0)
    text = (torch.randn(1, TOKENS["text"], roles.student.config.joint_attention_dim, generator=gen) * 0.5)
    cond = Cond(text.to(bench.device), torch.ones(1, TOKENS["text"], dtype=torch.bool, device=bench.device))
    noise = torch.randn(1, 16, side, side, generator=gen).to(bench.device)
    times = []
    for _ in range(3):
        if bench.cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad(), torch.autocast(bench.device.type, torch.bfloat16, enabled=recipe.dmd.bf16):
            few_step_sample(roles.ema, noise, cond, recipe.timesteps, torch.Generator(bench.device).manual_seed(1))
        if bench.cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    bench.phase("sample", sample_4step_s=[round(x, 2) for x in times])


def save_time(bench: Bench, recipe, ctx) -> None:
    from flashdistill.distill import trainer

    out = bench.work / "run"
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    trainer.save(ctx, out, 1, {"fingerprint": {}, "recipe": recipe.to_dict()})
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    bench.phase("checkpoint_saved", seconds=round(time.perf_counter() - t, 1), gib=round(size / GIB, 2))


def profile(bench: Bench, ctx, flops) -> None:
    """One iteration under torch.profiler: the 30 ops with the most device (or CPU) time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if bench.cuda else [])
    with torch_profile(activities=activities) as prof:
        row = iterate(bench, ctx, flops, 2000)
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
    tables = {}
    for key in (("self_cuda_time_total", "self_device_time_total") if bench.cuda else ()) + ("self_cpu_time_total",):
        try:
            tables[key] = events.table(sort_by=key, row_limit=30)
        except (AttributeError, KeyError, RuntimeError):
            continue
    busy = round(device_us / 1e6 / row["step_time"], 3) if bench.cuda else None
    bench.result["profile"] = {"iteration": row, "device_busy_fraction": busy, "tables": tables}
    bench.phase("profiled", device_busy_fraction=busy)


def timing_without_checkpointing(bench: Bench, recipe, roles, flops) -> None:
    """Batch-1 iterations with per-block checkpointing off: what recomputation costs in time."""
    from flashdistill.distill import iteration

    roles.student.base.transformer.disable_gradient_checkpointing()
    recipe.dmd.batch_size, recipe.dmd.micro_batch, recipe.tasks.ratio = 1, 0, "5:5"
    ctx = iteration.build_context(recipe, roles, bench.ctx.dist, bench.work / "run", None)
    rows = [iterate(bench, ctx, flops, i) for i in range(1, 1 + bench.args.no_checkpointing_iters)]
    roles.student.base.transformer.enable_gradient_checkpointing()
    bench.result["timing_no_checkpointing"] = rows
    same = [r for r in bench.result["timing"] if (r["step"], r["k"]) in {(x["step"], x["k"]) for x in rows}]
    bench.phase("timing_no_checkpointing", seconds=[r["step_time"] for r in rows],
                with_checkpointing=[r["step_time"] for r in same],
                peak_allocated_gib=max((r.get("peak_allocated_gib", 0) for r in rows), default=None))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the tiny folder's transformer config (CPU smoke test)")
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--iters", type=int, default=10, help="batch-1 timing iterations (the first is a warm-up)")
    p.add_argument("--memory", nargs=3, action="append", metavar=("BATCH", "MICRO", "RATIO"),
                   help="a memory case: global batch, micro-batch, T2I:Edit ratio (repeatable; default 8 2 0:1 and "
                        "8 4 0:1: all edit rows, the worst case)")
    p.add_argument("--memory-iters", type=int, default=1)
    p.add_argument("--no-checkpointing-iters", type=int, default=0,
                   help="batch-1 iterations with per-block checkpointing off (the same steps as the timing run's)")
    p.add_argument("--profile", action="store_true", help="profile one iteration at the end")
    p.add_argument("--save", action="store_true", help="time one checkpoint save")
    p.add_argument("--set", nargs="*", default=[], help="recipe overrides")
    p.add_argument("--deadline", type=float, default=1e9, help="skip what would start after this many seconds")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = p.parse_args(argv)
    args.memory = [(int(b), int(m), r) for b, m, r in (args.memory or [("8", "2", "0:1"), ("8", "4", "0:1")])]
    return args


def main(argv=None) -> int:
    import tempfile

    args = parse(argv)
    bench = Bench(args)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        bench.work = Path(tmp)
        try:
            bench.result["matmul_tflops"] = matmul_tflops(bench.device)
            recipe, roles, ctx, flops = build(bench, bench.work)
            bench.ctx = ctx
            timing(bench, recipe, ctx, flops)
            sample_time(bench, recipe, roles)
            memory_cases(bench, recipe, roles, flops)
            if args.no_checkpointing_iters and not bench.late():
                timing_without_checkpointing(bench, recipe, roles, flops)
            if args.save and not bench.late():
                save_time(bench, recipe, ctx)
            if args.profile and not bench.late():
                recipe.dmd.batch_size, recipe.dmd.micro_batch, recipe.tasks.ratio = 1, 0, "1:0"
                from flashdistill.distill import iteration

                profile(bench, iteration.build_context(recipe, roles, ctx.dist, bench.work / "run", None), flops)
        except Exception:  # noqa: BLE001 - a benchmark reports what broke, with what it measured before
            import traceback

            bench.result["errors"].append(traceback.format_exc()[-4000:])
            print(traceback.format_exc(), file=sys.stderr)
        bench.dump()
    print(f"wrote {args.out}")
    return 1 if bench.result["errors"] and not bench.result["timing"] else 0


if __name__ == "__main__":
    sys.exit(main())
