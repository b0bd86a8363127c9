"""Sampling speed of teachers and students, measured the same way for both, in the same run.

A measurement times `pipeline.sample` on a fixed batch of prompts: one 1-NFE warm-up call first (it encodes the
prompts and lets the allocator settle, so text encoding is billed to neither side), then timed calls until
`min_seconds` have passed or `repeats` calls were made, of which the median counts.
Reported per configuration: seconds per batch, latency (seconds per batch at batch 1), images
per second, and network passes per image (`SamplingSpec.passes`: a guided Euler step is two passes).

The ideal speed-up of a student over a teacher is the ratio of their passes per image (teacher at 50 NFE with CFG:
100 passes; student at 4 NFE: 4 passes; 25x). The measured ratio is the ratio of images per second at the same
batch size. Both come out of `compare`, which `flashdistill quickstart` and `benchmarks/speed.py` call.

`iteration_split` times a distillation iteration by its parts (`ITERATION_PARTS`: the trainer's timers, read from
distill/iteration.py's logged scalars).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from flashdistill.bench.cases import t2i_bench_cases
from flashdistill.distill.iteration import SCALARS


@dataclass
class SpeedRow:
    """One sampler at one batch size."""

    label: str  # e.g. "teacher:base@50"
    nfe: int
    passes: int  # network passes per image
    batch: int
    repeats: int  # timed calls made
    seconds_per_batch: float  # median over repeats
    images_per_s: float

    def to_json(self) -> dict:
        return asdict(self)


def speed_prompts(n: int) -> list[str]:
    """`n` prompts from the val split, cycling through the T2I categories (never the bench's own prompts)."""
    per_cat = -(-n // 3)
    cases = t2i_bench_cases(per_cat, "val")
    rounds = [cases[i::per_cat] for i in range(per_cat)]  # the i-th case of every category: round-robin
    return [c.prompt for group in rounds for c in group][:n]


def _timed(pipe, prompts: list[str], nfe: int | None) -> float:
    batch = len(prompts)
    start = time.perf_counter()
    pipe.sample(prompts, [None] * batch, list(range(batch)), nfe)
    return time.perf_counter() - start


def measure_interleaved(samplers: list[tuple[str, object, int | None]], batch: int, repeats: int) -> list[SpeedRow]:
    """Median wall time of T2I batches of size `batch` for every sampler, timed in interleaved rounds (round r
    times each sampler once, in turn), so that a drift in the machine's load (another process starting or ending)
    falls on all of them alike instead of on whichever ran at that moment. One 1-NFE warm-up call per sampler first
    encodes the prompts and settles the allocator at this batch size."""
    prompts = speed_prompts(batch)
    for _, pipe, _ in samplers:
        _timed(pipe, prompts, 1)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, _, _ in samplers}
    for _ in range(max(1, repeats)):
        for label, pipe, nfe in samplers:
            times[label].append(_timed(pipe, prompts, nfe))
    rows = []
    for label, pipe, nfe in samplers:
        seconds = statistics.median(times[label])
        steps = nfe if nfe is not None else pipe.default_nfe
        rows.append(SpeedRow(label, steps, pipe.spec.passes(steps), batch, len(times[label]), round(seconds, 4),
                             round(batch / seconds, 3)))
    return rows


def compare(samplers: list[tuple[str, object, int | None]], batches: list[int], repeats: int,
            reference: str, student: str) -> dict:
    """Measure every (label, pipeline, nfe) at every batch size (`measure_interleaved`); ratios of `student` over
    `reference` per batch. A measured ratio above the ideal (the ratio of network passes) cannot come from the
    work done: it is noise of the machine's load, and `above_ideal` says so."""
    rows: list[SpeedRow] = []
    with tqdm(total=len(batches), desc="speed", unit="batch size") as bar:
        for batch in batches:
            bar.set_postfix_str(f"batch {batch}, {repeats} interleaved rounds")
            rows += measure_interleaved(samplers, batch, repeats)
            bar.update(1)
    ratios = []
    for batch in batches:
        ref = next(r for r in rows if r.label == reference and r.batch == batch)
        stu = next(r for r in rows if r.label == student and r.batch == batch)
        measured, ideal = round(stu.images_per_s / ref.images_per_s, 2), round(ref.passes / stu.passes, 2)
        ratios.append({"batch": batch, "reference": reference, "student": student, "measured_speedup": measured,
                       "ideal_speedup": ideal, "above_ideal": measured > ideal,
                       "reference_passes": ref.passes, "student_passes": stu.passes})
    return {"rows": [r.to_json() for r in rows], "ratios": ratios, "repeats": repeats,
            "method": "median wall time of pipeline.sample calls timed in interleaved rounds (each round times "
                      "every sampler once, in turn) after one 1-NFE warm-up call each; T2I, val-split prompts, "
                      "this process's torch threads"}


# The seconds the trainer logs per iteration, by part (the iteration's own timers), then the whole iteration.
ITERATION_PARTS = tuple(s for s in SCALARS if s.startswith("time_")) + ("step_time",)


def iteration_split(recipe, iterations: int, warmup: int, encoder=None) -> dict:
    """Seconds of one distillation iteration by part (the trainer's own timers), median and mean over
    `iterations` iterations after `warmup`; the weights are trained in a scratch folder and thrown away."""
    import tempfile
    from pathlib import Path

    from flashdistill.distill.iteration import build_context, train_iteration
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.runtime.dist import Dist

    rows = []
    with tempfile.TemporaryDirectory(prefix="iteration-split-") as tmp:
        ctx = build_context(recipe, build_roles(recipe, Dist()), Dist(), Path(tmp), encoder)
        for step in tqdm(range(warmup + iterations), desc="distill iterations", unit="it"):
            metrics = train_iteration(ctx, step)
            if step >= warmup:
                rows.append(metrics)
    return {"iterations": iterations, "warmup": warmup, "batch_size": recipe.dmd.batch_size,
            "critic_updates": recipe.critic.updates, "ks": [r["k"] for r in rows],
            "teachers_run": [r["teachers_run"] for r in rows], "parts_s": summarize_parts(rows)}


def summarize_parts(rows: list[dict]) -> dict:
    """Median and mean seconds of each part of an iteration over the trainer's per-iteration metrics."""
    parts = {}
    for part in ITERATION_PARTS:
        values = [r.get(part, 0.0) for r in rows]
        parts[part] = {"median": round(statistics.median(values), 4), "mean": round(statistics.fmean(values), 4)}
    return parts
