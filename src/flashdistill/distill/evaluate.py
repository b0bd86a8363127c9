"""Quick periodic evaluation during distillation, and keeping the best student.

DMD students can get worse as training goes on (users of DMD toolkits report it; paper §4.2 shows it for a
specialized teacher). So every `eval.every` iterations the EMA student is scored on a small slice of the two mini
benches with the world judge, the score is logged (tensorboard `eval/score`, log.jsonl `"kind": "eval"`), and when
it is the best so far the student is exported to `<run>/best/` (what `load_student` prefers). `eval.patience`
stops a run that has not improved for that many evaluations.

A scorer is any callable `scorer(student: Student, iteration: int) -> dict` with a float `"score"` (higher is
better); tests inject a cheap fake. `BenchScorer` is the real one: `run_bench` on `limit` cases per category of the
`val` split (bench-like cases from seeds disjoint from the bench and from training), score = mean of the T2I and
edit averages (1-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashdistill.distill.export import STUDENT_FILE, Student, StudentModel
from flashdistill.errors import UserError


class BenchScorer:
    """World-judge score of a student on a bench slice; bench folders go to `<out>/step-NNNNNN/{t2i,edit}`."""

    def __init__(self, out: Path, limit: int, resolution: int = 32, encoder=None, benches=("t2i", "edit")):
        from flashdistill.bench.world_judge import WorldJudge
        from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases

        self.out, self.resolution, self.encoder = Path(out), resolution, encoder
        # The val split: choosing the best checkpoint on the bench itself would flatter the reported scores.
        make = {"t2i": t2i_bench_cases, "edit": edit_bench_cases}
        self.cases = {b: make[b](limit, "val") for b in benches}
        self.labels = {b: f"val:{limit}" for b in benches}
        self.judge = WorldJudge(resolution)

    def __call__(self, student: Student, iteration: int) -> dict:
        from flashdistill.bench.runner import run_bench

        model = StudentModel(student, name=f"student@{iteration}", encoder=self.encoder)
        result = {}
        for bench, cases in self.cases.items():
            res = run_bench(bench, model, self.judge, cases, self.out / f"step-{iteration:06d}" / bench,
                            len(student.timesteps), self.labels[bench], self.resolution)
            result[bench] = res["average"]
        result["score"] = float(np.mean([result[b] for b in self.cases]))
        return result


@dataclass
class BestTracker:
    """The best score so far (read back from `<run>/best/student.json`) and evaluations since it."""

    folder: Path
    best: float = float("-inf")
    best_iteration: int = -1
    since_best: int = 0

    @classmethod
    def open(cls, run: Path, since_best: int = 0) -> BestTracker:
        path = Path(run) / "best" / STUDENT_FILE
        from flashdistill.files import read_json_object

        info = read_json_object(path, "best student record") if path.is_file() else {}
        score, iteration = info.get("score", float("-inf")), info.get("iteration", -1)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not isinstance(iteration, int):
            raise UserError(f"{path}: 'score' must be a number and 'iteration' an integer")
        return cls(Path(run) / "best", float(score), iteration, since_best)

    def beats(self, score: float, iteration: int) -> bool:
        """Whether `score` at `iteration` is a new best (re-evaluating the best iteration after a resume is)."""
        return iteration == self.best_iteration or score > self.best

    def record(self, score: float, iteration: int) -> None:
        """`iteration` is the new best (its export is in `folder`)."""
        self.best, self.best_iteration, self.since_best = score, iteration, 0
