"""The measuring pieces of benchmarks/gpu_fullsize.py, shared by its main process and its torchrun workers
(benchmarks/gpu_fullsize_fsdp.py): the result JSON written as it goes, the recipe with the random stand-ins of
fullsize_random.py, one timed iteration as a row, a phase's summary, and the checks that the student learned.

Every float goes into the JSON at full precision (issue 23's rounding to 3 decimals printed real generator losses and
gradient norms of ~1e-5 as 0.0). A phase's summary: `median_s` (seconds per iteration, the warm-up rows left out),
`model_tflops_per_s` (model FLOPs of those rows over their seconds) and `mfu_vs_989` (over the H100/H200's dense
bf16 peak of 989 TFLOP/s), beside peak allocated / reserved memory and the planner's prediction. Model FLOPs are
fullsize_random.FlopCounter's: every transformer call from its real token counts, a grad pass twice (forward and
input-gradient backward; the frozen weights get no weight gradient), recomputation not counted.

The learning checks (`learning`): every timed row has a finite, non-zero DMD gradient norm and was not skipped, and
the student adapter's weights moved over the phase; gpu_fullsize.py exits 1 when one fails.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"
GIB = 2**30
PEAK_TFLOPS = 989.0  # dense bf16 of an H100 / H200 SXM


class Bench:
    """The measurement of one process, written to `out` (JSON) after every step; `budget` seconds from `t0`."""

    def __init__(self, out: Path, device: str, budget: float, t0: float | None = None):
        import diffusers

        self.out, self.budget = Path(out), budget
        self.t0 = time.perf_counter() if t0 is None else t0
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__,
                       "diffusers": diffusers.__version__,
                       "device": torch.cuda.get_device_name(0) if self.cuda else "cpu", "phases": {}, "errors": [],
                       "skipped": []}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def dump(self) -> None:
        self.result["elapsed_s"] = time.perf_counter() - self.t0
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.result, indent=1) + "\n")

    def memory(self) -> dict:
        if not self.cuda:
            return {}
        torch.cuda.synchronize()
        return {"allocated_gib": torch.cuda.memory_allocated() / GIB,
                "peak_allocated_gib": torch.cuda.max_memory_allocated() / GIB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}

    def note(self, what: str, **extra) -> None:
        """A progress line (and the JSON written)."""
        print(f"[{time.perf_counter() - self.t0:7.1f} s] {what} {json.dumps(extra, default=str)[:400]}", flush=True)
        self.dump()

    def skip(self, what: str, needs: float) -> bool:
        """Whether `what` (about `needs` seconds) no longer fits the budget; recorded when it does not."""
        if self.left() >= needs:
            return False
        self.result["skipped"].append(f"{what}: needs ~{needs:.0f} s, {max(self.left(), 0):.0f} s of the budget left")
        self.note("skipped", phase=what)
        return True


def recipe_sets(work: Path, device: torch.device, resolution: int, rank: int, extra: list[str]) -> list[str]:
    """The shipped recipe on the random folder in `work` (fullsize_random.write_inputs) at batch 1."""
    return [f"teachers.base={work}", f"teachers.specialized={work / 'specialized.safetensors'}",
            f"data.prompts={work / 'prompts.jsonl'}", f"data.edits={work / 'edits.jsonl'}",
            f"run.text_cache={work / 'cache'}", "dmd.batch_size=1", f"data.resolution={resolution}",
            f"roles.lora_rank={rank}", f"run.device={device.type}", "dmd.iterations=100000",
            f"dmd.bf16={str(device.type == 'cuda').lower()}", *extra]


def build(bench: Bench, work: Path, sets: list[str], out: Path):
    """(recipe, roles, context, FLOP counter) as `flashdistill distill` builds them, on the random family."""
    from fullsize_random import FlopCounter, random_family

    from flashdistill.distill import iteration
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.runtime.dist import setup_distributed

    recipe = load_recipe(RECIPE, sets)
    dist = setup_distributed(recipe.run.device, recipe.dmd.batch_size, recipe.run.parallel == "fsdp")
    family = random_family(work, recipe.data.resolution, dist.device)
    start = time.perf_counter()
    roles = build_roles(recipe, dist, family)
    params = {role: {"params": sum(p.numel() for p in getattr(roles, role).parameters()),
                     "dtypes": sorted({str(p.dtype) for p in getattr(roles, role).parameters()})}
              for role in ("student", "critic", "ema")}
    base = roles.student.base.transformer
    bench.result["frozen_dtype"] = str(next(base.parameters()).dtype)
    bench.note("roles_built", seconds=time.perf_counter() - start, adapters=params, **bench.memory())
    ctx = iteration.build_context(recipe, roles, dist, out, None)
    return recipe, roles, ctx, FlopCounter(base)


def iterate(bench: Bench, ctx, flops, step: int) -> dict:
    """One `train_iteration` at batch index `step` from fresh peak statistics: its metrics, model FLOPs, memory."""
    from contextlib import nullcontext

    from flashdistill.distill import iteration
    from flashdistill.models.compiled import compile_errors

    if bench.cuda:
        torch.cuda.reset_peak_memory_stats()
    flops.flops = 0.0
    with compile_errors() if ctx.recipe.run.compile != "none" else nullcontext():
        row = dict(iteration.train_iteration(ctx, step))
    row["model_flop"] = flops.flops
    row["model_tflops_per_s"] = flops.flops / 1e12 / row["step_time"]
    row.update(bench.memory())
    print(json.dumps({k: row.get(k) for k in ("step", "k", "edit_rows", "step_time", "loss", "dmd_grad_norm")}),
          flush=True)
    return row


def summary(rows: list[dict], warm: int = 1, matmul: float | None = None) -> dict:
    """A phase's figures over its rows after the first `warm` (all of them if that leaves none)."""
    timed = rows[warm:] or rows
    seconds = sum(r["step_time"] for r in timed)
    tflops = sum(r["model_flop"] for r in timed) / 1e12 / seconds
    out = {"median_s": statistics.median(r["step_time"] for r in timed), "n": len(timed),
           "model_tflops_per_s": tflops, "mfu_vs_989": tflops / PEAK_TFLOPS,
           "mfu_vs_matmul": tflops / matmul if matmul else None}
    if "peak_allocated_gib" in rows[0]:
        out["peak_allocated_gib"] = max(r["peak_allocated_gib"] for r in rows)
        out["peak_reserved_gib"] = max(r["peak_reserved_gib"] for r in rows)
    return out


def _local(p: torch.Tensor) -> torch.Tensor:
    return p.to_local() if hasattr(p, "to_local") else p  # an FSDP2 shard: this rank's part


def snapshot(module) -> list[torch.Tensor]:
    """Host copies of `module`'s parameters (the student adapter's, before a phase)."""
    return [_local(p).detach().to("cpu", copy=True) for p in module.parameters()]


def change(module, before: list[torch.Tensor]) -> dict:
    """How far `module`'s parameters moved since `snapshot`: largest absolute change and relative norm."""
    after = [_local(p).detach().cpu() for p in module.parameters()]
    diff = math.sqrt(sum(float((a.double() - b.double()).square().sum()) for a, b in zip(after, before)))
    norm = math.sqrt(sum(float(b.double().square().sum()) for b in before))
    return {"max_abs": max(float((a - b).abs().max()) for a, b in zip(after, before)),
            "rel_norm": diff / norm if norm else float("inf")}


def learning(name: str, rows: list[dict], moved: dict | None) -> list[str]:
    """What says the student did not learn in phase `name` (empty: it did)."""
    bad = [f"{name}: step {r['step']} has DMD gradient norm {r['dmd_grad_norm']!r}" for r in rows
           if not (math.isfinite(r["dmd_grad_norm"]) and r["dmd_grad_norm"] > 0)]
    bad += [f"{name}: step {r['step']} was skipped (non-finite loss or gradient)" for r in rows if r["skipped"]]
    if moved is not None and not moved["max_abs"] > 0:
        bad.append(f"{name}: the student adapter's weights did not change")
    return bad


def planned_peak(bench: Bench, recipe, micro: int, edits: bool) -> float:
    """`flashdistill plan`'s peak allocated GiB for this recipe (its parallel layout and offload) and workload."""
    from fullsize_random import TOKENS

    from flashdistill.distill.layouts import peak
    from flashdistill.distill.layouts.plan import count, meta_transformer

    work = Path(recipe.teachers["base"])
    counts = count(meta_transformer(work / "transformer" / "config.json"), recipe.roles.lora_rank)
    load = peak.Workload(micro_batch=micro, resolution=recipe.data.resolution, edits=edits,
                         text_tokens=TOKENS["text"], vl_tokens=TOKENS["vl"],
                         checkpointing=recipe.roles.gradient_checkpointing)
    s = peak.settings_from_recipe(recipe, 1)
    frozen = 2 if bench.result["frozen_dtype"] == "torch.bfloat16" else 4
    p = peak.predict(counts, s.mode, s.teachers, load, 1, frozen, sharded=s.sharded, offload=s.offload)
    return p.total / GIB
