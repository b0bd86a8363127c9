"""What a study on your own model will cost (studies/own.py): runs, iterations, judge calls and, where a measured
figure applies, the time. Tests: `pytest tests/test_own_study.py`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from flashdistill.distill.recipe import Recipe
from flashdistill.errors import UserError
from flashdistill.files import read_json_object
from flashdistill.studies.report import DONE_FILE
from flashdistill.studies.spec import Arm, Study

# One H200, the shipped recipe at full size (benchmarks/results/gpu_fullsize_h200.json, memory phase "8 2 0:1"):
# 69.66 s per iteration of 8 rows at 1024², micro-batch 2, per-block checkpointing, critic.updates 2.
H200_ITERATION_S, H200_ROWS, H200_PIXELS = 69.66, 8, 1024 * 1024
H200_SOURCE = "benchmarks/results/gpu_fullsize_h200.json"


class OwnStudy(Protocol):
    """What the cost reads of a study on the user's recipe (studies/own.py `OwnStudy`)."""

    path: Path  # the recipe file
    recipe: Recipe
    study: Study


def seconds_per_iteration(own: OwnStudy, out: Path) -> tuple[float, str] | None:
    """(seconds, where the figure comes from) of one iteration of this study's runs: measured by its finished runs
    when there are any, else scaled from the H200 measurement when the base transformer is Qwen-Image's full size
    and the runs go to a GPU; None when nothing measured applies."""
    walls = []
    for done in sorted(out.glob(f"arms/*/seed*/{DONE_FILE}")):
        train = read_json_object(done, "finished-run record").get("train") or {}
        if train.get("wall_time_s") and train.get("iterations"):
            walls.append(float(train["wall_time_s"]) / int(train["iterations"]))
    if walls:
        return sum(walls) / len(walls), f"measured by this study's {len(walls)} finished runs"
    recipe = own.recipe
    if recipe.run.device == "cpu" or not _full_size(recipe.teachers["base"]):
        return None
    h, w = recipe.data.size(1024)
    scale = recipe.dmd.batch_size / H200_ROWS * (h * w) / H200_PIXELS
    return (H200_ITERATION_S * scale,
            f"{H200_ITERATION_S:.1f} s per iteration of {H200_ROWS} rows at 1024² on one H200 ({H200_SOURCE}), "
            f"scaled in proportion to rows and pixels to {recipe.dmd.batch_size} rows at {h}x{w}, an estimate; quick "
            f"evaluations not counted")


def _full_size(base: str) -> bool:
    """Whether the base folder's transformer has the shipped Qwen-Image's size (layers, heads, head size)."""
    from flashdistill.distill.layouts.plan import SHIPPED, transformer_config_path

    try:
        mine = json.loads(transformer_config_path(base).read_text())
    except (UserError, OSError, ValueError):
        return False
    ref = json.loads(SHIPPED["qwen-image"].read_text())
    return all(mine.get(k) == ref[k] for k in ("num_layers", "num_attention_heads", "attention_head_dim"))


def cost_line(own: OwnStudy, out: Path, seeds: int, todo: list[tuple[Arm, int]]) -> str:
    """What the study will cost: runs, iterations, judge calls, and the time when a measured figure applies."""
    from flashdistill.data.files import read_edits, read_prompts

    recipe, study = own.recipe, own.study
    iterations = recipe.dmd.iterations
    t2i = len(read_prompts(recipe.eval.prompts))
    edits = len(read_edits(recipe.eval.edits, check_images=False)) if recipe.eval.edits else 0
    per_eval = {a.key: t2i + (0 if "eval.edits=null" in a.overrides else edits) for a in study.arms}
    calls = sum(per_eval[a.key] * (iterations // recipe.eval.every) for a, _ in todo)
    text = (f"study {study.name} on {own.path}: {len(study.arms)} arms × {seeds} seeds = {len(study.arms) * seeds} "
            f"runs, {len(todo)} to do, each {iterations} iterations at batch {recipe.dmd.batch_size} "
            f"({len(todo) * iterations} in all) and {iterations // recipe.eval.every} judged evaluations "
            f"({calls} VLM judge calls)")
    rate = seconds_per_iteration(own, out)
    if rate is None:
        return text + "; time: no measured figure for this model yet (the first finished run measures it)"
    seconds = rate[0] * iterations * len(todo)
    return text + f"; about {seconds / 3600:.1f} GPU-hours ({rate[0]:.1f} s per iteration: {rate[1]})"


