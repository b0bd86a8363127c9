"""`run.compile: blocks` against eager on a CPU: whole DMD iterations of tiny roles.mode-lora roles (base, a
specialized LoRA teacher, student / critic / EMA adapters, per-block checkpointing), float32, from the same seed.

    python benchmarks/compile_cpu.py --out benchmarks/results/compile_cpu.json     # ~5-15 min on 2 cores

Records per iteration, for each mode: the losses, gradient norms and DMD gradient norm at full precision, their
relative differences compiled - eager, the seconds, and the ATen operators dispatched (torch.profiler's `aten::`
events: each is at least one kernel launch on a GPU, so their count is the launch count's proxy here). The first
compiled iterations build every variant of the block (inductor's C++); the later ones show the steady state.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("loss", "loss_critic", "grad_norm", "grad_norm_critic", "dmd_grad_norm")


def teachers(root: Path) -> tuple[Path, Path]:
    """Two tiny random teachers: a base, and a rank-4 LoRA on it with non-zero B."""
    from flashdistill.models.lora import add_lora
    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    torch.manual_seed(0)
    FlowModel(MMDiTConfig.tiny()).save_pretrained(root / "base")
    model = FlowModel.from_pretrained(root / "base")
    add_lora(model, rank=4, alpha=None, targets=None, base=str(root / "base"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(root / "lora")
    return root / "base", root / "lora"


def run(mode: str, root: Path, iterations: int) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    from flashdistill.distill import iteration
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.runtime.dist import Dist

    base, lora = root / "base", root / "lora"
    recipe = load_recipe(ROOT / "configs" / "distill_tiny.yaml", [
        f"teachers.base={base}", f"teachers.specialized={lora}", f"run.text_cache={root / 'cache'}",
        "roles.mode=lora", "roles.lora_rank=4", "roles.gradient_checkpointing=true", f"run.compile={mode}"])
    roles = build_roles(recipe, Dist())
    ctx = iteration.build_context(recipe, roles, Dist(), root / f"run-{mode}", None)
    rows = []
    for step in range(iterations):
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            metrics = iteration.train_iteration(ctx, step)
        ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
        rows.append({**{k: metrics[k] for k in (*COMPARED, "k", "edit_rows", "step_time")}, "aten_ops": ops,
                     "wall_s": time.perf_counter() - start})
        print(mode, json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--iterations", type=int, default=6)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teachers(root)
        eager, compiled = run("none", root, args.iterations), run("blocks", root, args.iterations)
    diffs = [{k: (c[k] - e[k]) / abs(e[k]) if e[k] else c[k] - e[k] for k in COMPARED} for c, e in zip(compiled, eager)]
    steady = slice(len(eager) // 2, None)  # the later half: every variant compiled
    result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "eager": eager,
              "compiled": compiled, "relative_difference": diffs,
              "max_abs_relative_difference": {k: max(abs(d[k]) for d in diffs) for k in COMPARED},
              "aten_ops_per_iteration": {"eager": [r["aten_ops"] for r in eager],
                                         "compiled": [r["aten_ops"] for r in compiled]},
              "steady_seconds": {"eager": sum(r["step_time"] for r in eager[steady]),
                                 "compiled": sum(r["step_time"] for r in compiled[steady])}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("max_abs_relative_difference", "aten_ops_per_iteration",
                                             "steady_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
