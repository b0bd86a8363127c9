"""Per-rank resident parameters, gradients and AdamW states of a 2-rank FSDP2 run, next to
`flashdistill plan --world-size 2` for the same config.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/fsdp_memory.py \
        --out benchmarks/results/fsdp_memory.json

Rank 0 writes a tiny random QwenImageEditPlusPipeline folder, a rank-4 LoRA teacher on it, data files and their
condition cache (as tests/conftest.py's qwen_world). Every rank then builds the roles of configs/qwen-image-flash.yaml
with `run.parallel: fsdp` in each layout, runs one DMD iteration (so gradients and AdamW states exist as in
training), reshards the roots (FSDP2 leaves a root's own non-block parameters gathered after a forward: at
20B about 0.2% of a model, at this tiny size 18%), and counts what it holds (distill/layouts/memory.py: DTensor local shards, each tensor once). Elements are
compared with the planner's per-rank counts; bytes are given both as resident here (float32 everywhere on a CPU)
and at the planner's precision (frozen 2 B, trainable/grad/EMA 4 B, each AdamW moment 4 B per element), which is
what `plan` prints. Rank 0 writes JSON and prints a Markdown table; the ratio measured / planned must be within
10% (tests/test_fsdp.py runs this script).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"
MODES = {"full": [], "lora": [], "lora, critic.lora false": ["critic.lora=false"]}
PRECISION = {"frozen": 2, "trainable": 4, "ema": 4, "optimizer": 4, "grads": 4}  # the planner's bytes per element


def _world(root: Path) -> list[str]:
    import numpy as np
    from PIL import Image

    from flashdistill.cli import main
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    base, lora = root / "base", root / "specialized.safetensors"
    sets = [f"teachers.base={base}", f"teachers.specialized={lora}", f"data.prompts={root / 'p.jsonl'}",
            f"data.edits={root / 'e.jsonl'}", f"run.text_cache={root / 'cache'}", "data.resolution=64"]
    if os.environ.get("RANK", "0") == "0":
        write_tiny_folder(base, "edit-plus")
        write_random_lora(base, lora, rank=4)
        (root / "p.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "category": c}) + "\n"
                                              for i, c in enumerate(("landscape", "portrait", "text"))))
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(root / "s.png")
        (root / "e.jsonl").write_text(json.dumps({"image": "s.png", "instruction": "make it blue",
                                                  "category": "text_editing"}) + "\n")
        assert main(["cache", str(RECIPE), "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    return sets + ["roles.lora_rank=4", "dmd.batch_size=4", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
                   "run.parallel=fsdp"]


def measure_mode(sets: list[str], mode: str, out: Path) -> dict:
    """This rank's counts after one iteration of `mode`, with the planner's for the same world size."""
    from flashdistill.distill.iteration import build_context, train_iteration
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.distill.layouts.memory import measure, measure_grads, planned, planned_grads
    from flashdistill.distill.layouts.plan import count, meta_transformer, plan_spec
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.runtime.dist import setup_distributed

    # the default adapter targets, which the tiny specialized teacher's LoRA has too: the planner counts that
    # teacher's adapter at the recipe's targets, and this benchmark checks its counts element for element
    overrides = sets + [f"roles.mode={'full' if mode == 'full' else 'lora'}", "roles.lora_targets=null"] + MODES[mode]
    recipe = load_recipe(RECIPE, overrides)
    dist = setup_distributed("cpu", recipe.dmd.batch_size)
    roles = build_roles(recipe, dist)
    train_iteration(build_context(recipe, roles, dist, out, None), 0)  # gradients and AdamW states as in training
    for module in [getattr(m, "base", m) for m in (*roles.teachers.values(), roles.student, roles.ema, roles.critic)]:
        module.reshard()  # FSDP2 keeps a root's own (non-block) parameters gathered after its forward; free them
    live = measure(roles)
    grads = measure_grads(roles)
    config, teachers = plan_spec(str(RECIPE), overrides)
    counts = count(meta_transformer(config), rank=4)
    plan = planned(counts, mode, teachers, dist.world)
    plan_grads = planned_grads(counts, mode, teachers, dist.world)
    # Free this mode's sharded roles now, on every rank at the same point, instead of whenever the cyclic GC gets
    # to them (possibly inside the next mode's collectives).
    del roles
    gc.collect()
    dist.barrier()
    rows = {}
    for group in ("frozen", "trainable", "ema", "optimizer", "grads"):
        n, p = (grads[0], plan_grads[0]) if group == "grads" else (live.elements[group], plan.elements[group])
        resident = grads[1] if group == "grads" else live.bytes[group]
        rows[group] = {"elements": n, "planned_elements": p, "bytes_resident": resident,
                       "bytes_at_plan_precision": n * PRECISION[group],
                       "planned_bytes": plan_grads[1] if group == "grads" else plan.bytes[group],
                       "ratio": n / p if p else None}
    measured = sum(r["bytes_at_plan_precision"] for r in rows.values())
    expected = sum(r["planned_bytes"] for r in rows.values())
    return {"groups": rows, "total_at_plan_precision": measured, "planned_total": expected,
            "total_ratio": measured / expected}


def main(argv=None) -> int:
    import torch.distributed as torch_dist

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fsdp_memory.json"))
    args = parser.parse_args(argv)
    from flashdistill.runtime.dist import setup_distributed, teardown_distributed

    setup_distributed("cpu", 4)  # the process group, before rank 0 writes the world the others read
    box = [tempfile.mkdtemp(prefix="fsdp-memory-") if torch_dist.get_rank() == 0 else None]
    torch_dist.broadcast_object_list(box, src=0)
    tmp = Path(box[0])
    sets = _world(tmp)
    torch_dist.barrier()
    results = {mode: measure_mode(sets, mode, tmp / "run") for mode in MODES}
    gathered = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(gathered, results)
    if torch_dist.get_rank() == 0:
        report = {"world_size": len(gathered), "command": "OMP_NUM_THREADS=1 torchrun --standalone "
                  "--nproc_per_node=2 benchmarks/fsdp_memory.py", "ranks": gathered}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print("| layout | rank | weights+grads+AdamW+EMA, measured (plan precision) | plan --world-size 2 | ratio |")
        print("|---|---:|---:|---:|---:|")
        for mode in MODES:
            for rank, res in enumerate(gathered):
                r = res[mode]
                print(f"| {mode} | {rank} | {r['total_at_plan_precision']:,.0f} B | {r['planned_total']:,.0f} B | "
                      f"{r['total_ratio']:.3f} |")
    torch_dist.barrier()  # no rank tears its process group down while the other still reads from it
    return teardown_distributed(0)  # ends the process (os._exit) without finalization: see its docstring


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
