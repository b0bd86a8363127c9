"""Quick evaluation on bench slices: during distillation, and for the quickstart's and the studies' benches.

DMD students can get worse as training goes on (users of DMD toolkits report it; paper §4.2 shows it for a
specialized teacher). So every `eval.every` iterations the EMA student is scored on a small slice of the two mini
benches with the world judge, the score is logged (tensorboard `eval/score`, log.jsonl `"kind": "eval"`), and when
it is the best so far the student is exported to `<run>/best/` (what `load_student` prefers; the bookkeeping is
`flashdistill.runtime.best.BestTracker`). `eval.patience` stops a run that has not improved for that many
evaluations.

A scorer is what `flashdistill.distill.trainer.Scorer` says: `scorer(ema, iteration, dist) -> dict | None`, called on
every rank, with a float `"score"` (higher is better); tests inject a cheap fake. `BenchScorer` is the world's: on
rank 0, `run_bench` on `limit` cases per category of the
`val` split (bench-like cases from seeds disjoint from the bench and from training), score = mean of the T2I and
edit averages (1-5). `WorldSlice` is a bench slice judged by the world judge (the scorer's, the quickstart's and
the studies' benches). On data files the quick evaluation is `flashdistill.bench.file_eval.FileEval`;
`make_scorer` picks the one a recipe asks for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashdistill.distill.export import Student
from flashdistill.pipeline import StudentModel


class WorldSlice:
    """Bench slices judged by the world judge: the first `limits[bench]` cases of each category of the shipped mini
    bench, or with `split` that many generated cases per category of the split (`val`, `bench`)."""

    def __init__(self, limits: dict[str, int], resolution: int, split: str | None = None):
        from flashdistill.bench.cases import BUILTIN_CASES, edit_bench_cases, load_cases, t2i_bench_cases
        from flashdistill.bench.world_judge import WorldJudge

        make = {"t2i": t2i_bench_cases, "edit": edit_bench_cases}
        self.cases, self.labels, self.resolution = {}, {}, resolution
        for bench, limit in limits.items():
            if split is None:
                self.cases[bench] = load_cases(BUILTIN_CASES[bench], bench, limit)
                self.labels[bench] = f"builtin:{BUILTIN_CASES[bench].name}:first-{limit}"
            else:
                self.cases[bench] = make[bench](limit, split)
                self.labels[bench] = f"{split}:{limit}"
        self.judge = WorldJudge(resolution)

    def run(self, bench: str, model, out: Path, nfe: int | None) -> dict:
        """`run_bench` of `model` on the slice of `bench` into `out` (resumed from its cases.jsonl)."""
        from flashdistill.bench.runner import run_bench

        return run_bench(bench, model, self.judge, self.cases[bench], out, nfe, self.labels[bench], self.resolution)


class BenchScorer:
    """World-judge score of a student on a bench slice; bench folders go to `<out>/step-NNNNNN/{t2i,edit}`."""

    def __init__(self, out: Path, limit: int, timesteps: list[float], resolution: int = 32, encoder=None,
                 benches=("t2i", "edit")):
        self.out, self.timesteps, self.resolution, self.encoder = Path(out), list(timesteps), resolution, encoder
        # The val split: choosing the best checkpoint on the bench itself would flatter the reported scores.
        self.slice = WorldSlice({b: limit for b in benches}, resolution, split="val")

    def __call__(self, ema, iteration: int, dist) -> dict | None:
        """Rank 0 scores the EMA student at the run's step times; the other ranks return None (the world's quick
        evaluation runs on one rank: `eval.every` needs run.parallel ddp, recipe.py)."""
        if not dist.main:
            return None
        student = Student(ema, self.timesteps)
        model = StudentModel(student, name=f"student@{iteration}", encoder=self.encoder)
        result = {}
        for bench in self.slice.cases:
            res = self.slice.run(bench, model, self.out / f"step-{iteration:06d}" / bench, len(student.timesteps))
            result[bench] = res["average"]
        result["score"] = float(np.mean([result[b] for b in self.slice.cases]))
        return result


def make_scorer(recipe, ctx, out: Path):
    """The quick evaluation of a distillation run, built by the commands and handed to `train_distill`: the world's
    val slice (rank 0), or samples of the eval files (every rank, judged on rank 0 by the VLM judge when eval.judge
    is vlm). `ctx`: the run's iteration context (student config, batch source, family, Dist)."""
    dist = ctx.dist
    if not recipe.data.uses_files():
        return BenchScorer(out / "eval", recipe.eval.limit, recipe.timesteps, ctx.roles.student.config.resolution,
                           ctx.source.encoder)
    from flashdistill.bench.file_eval import FileEval
    from flashdistill.distill.families import QwenImageFolderFamily

    judge = None
    e = recipe.eval
    if e.resolved_judge(True) == "vlm" and dist.main:
        from flashdistill.bench.vlm import VLMJudge

        judge = VLMJudge(e.vlm_base_url, e.vlm_model, api_key_env=e.vlm_api_key_env, concurrency=e.vlm_concurrency)
    family = ctx.family
    assert isinstance(family, QwenImageFolderFamily)  # data files: the family's check() refused any other
    return FileEval(recipe, family, out / "eval", dist.device, judge)
