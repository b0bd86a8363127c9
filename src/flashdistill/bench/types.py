"""Small typed results shared by the judges and the benchmark runner."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class CaseScore:
    """One judged case. `score` is the holistic 1-5 score; None when the judge failed on this case (see `error`)."""

    score: float | None
    sub_scores: dict[str, float] = field(default_factory=dict)
    reasoning: str = ""
    failure_modes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # judge-specific raw numbers, e.g. MAE to target
    error: str | None = None

    def to_json(self) -> dict:
        return asdict(self)
