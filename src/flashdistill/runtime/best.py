"""Best-score bookkeeping for a run's quick evaluations: the best score so far, its iteration, and evaluations
since it (what `eval.patience` counts). The best export's record (`<run>/best/student.json`) is read back on resume;
writing the export is the caller's."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object


@dataclass
class BestTracker:
    """The best score so far (read back from `<run>/best/student.json`) and evaluations since it."""

    folder: Path
    best: float = float("-inf")
    best_iteration: int = -1
    since_best: int = 0

    @classmethod
    def open(cls, run: Path, since_best: int = 0, record: str = "student.json") -> BestTracker:
        """`record`: the export's record file in `<run>/best/` (distill.export.STUDENT_FILE), with `score` and
        `iteration`."""
        path = Path(run) / "best" / record
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
