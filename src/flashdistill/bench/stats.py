"""Statistics of bench results: paired per-case differences, mean ± 95% confidence interval, verdicts.

    scores(folder)          {case id: score} from a bench folder's cases.jsonl (failed cases left out)
    paired(a, b)            mean of the per-case differences a - b over the cases both judged, its standard
                            error, 95% interval, and how many cases a wins, ties and loses
    mean_ci(values)         Interval: mean ± half-width with Student's t quantile at n - 1 degrees of freedom
    verdict(interval, +1)   confirmed / refuted / inconclusive at the interval's level

Bench cases are seeded per case, so case i of two runs on the same case file shares prompt and seed: differences
are paired. A study's unit of evidence is the training seed (`flashdistill.studies`): it takes one number per seed
and arm, and the interval over seeds carries both training noise and the noise of the bench slice.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import t as student_t

from flashdistill.errors import UserError

LEVEL = 0.95
VERDICTS = ("confirmed", "refuted", "inconclusive")


@dataclass(frozen=True)
class Interval:
    """mean ± half over n values at `level` (half is nan when n < 2: no spread, no interval)."""

    n: int
    mean: float
    half: float
    level: float = LEVEL

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half

    def to_json(self) -> dict:
        def fin(x: float) -> float | None:
            return round(x, 6) if math.isfinite(x) else None

        return {**asdict(self), "mean": fin(self.mean), "half": fin(self.half), "low": fin(self.low),
                "high": fin(self.high)}

    def text(self, digits: int = 2) -> str:
        if not math.isfinite(self.mean):
            return "—"
        if not math.isfinite(self.half):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half:.{digits}f}"


def t_quantile(level: float, df: int) -> float:
    """Two-sided Student's t quantile: P(|T| <= q) = level at df degrees of freedom."""
    return float(student_t.ppf(0.5 + level / 2, df))


def mean_ci(values, level: float = LEVEL) -> Interval:
    """Mean of `values` (non-finite ones left out) with its t interval: mean ± t_{n-1} · sd / sqrt(n)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return Interval(0, float("nan"), float("nan"), level)
    mean = statistics.fmean(xs)
    if len(xs) < 2:
        return Interval(1, mean, float("nan"), level)
    half = t_quantile(level, len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))
    return Interval(len(xs), mean, half, level)


def verdict(interval: Interval, direction: int) -> str:
    """`confirmed` when the interval excludes 0 on the side `direction` (+1: > 0, -1: < 0) claims, `refuted` when
    it excludes 0 on the other side, `inconclusive` otherwise (it holds 0, or it has fewer than 2 values)."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    if interval.n < 2 or not math.isfinite(interval.half):
        return "inconclusive"
    if interval.low > 0:
        return "confirmed" if direction > 0 else "refuted"
    if interval.high < 0:
        return "confirmed" if direction < 0 else "refuted"
    return "inconclusive"


def scores(folder: str | Path, category: str | None = None) -> dict[str, float]:
    """{case id: score} of a bench output folder (cases of `category` only, if given)."""
    path = Path(folder) / "cases.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {folder} a bench output folder?)")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r["score"] for r in rows
            if r.get("score") is not None and (category is None or r.get("category") == category)}


def paired(a: dict[str, float], b: dict[str, float], level: float = LEVEL) -> dict:
    """Per-case differences a - b over the cases both hold: n, mean_diff, stderr, ci (half-width at `level`),
    wins / ties / losses of a."""
    ids = sorted(set(a) & set(b))
    if len(ids) < 2:
        raise UserError(f"fewer than 2 cases judged in both runs ({len(ids)})")
    diffs = [a[i] - b[i] for i in ids]
    interval = mean_ci(diffs, level)
    return {"n": len(ids), "mean_diff": interval.mean, "stderr": statistics.stdev(diffs) / math.sqrt(len(diffs)),
            "ci": interval.half, "level": level, "wins": sum(d > 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}
