"""The recipe's `eval` group: when and how a distillation run judges its EMA student while it trains.

The embedded world is judged on a slice of its val split by the world judge; with data files the run samples the
eval files and judges them with an OpenAI-compatible VLM, or only saves the samples (`judge: none`).
"""

from __future__ import annotations

from dataclasses import dataclass

from flashdistill.runtime.config import require


@dataclass
class EvalSection:
    """The quick evaluation: the world's val slice (embedded), or samples of eval files (data files,
    bench/file_eval.py)."""

    every: int = 0  # iterations between quick evaluations; 0 = off
    limit: int = 2  # world: bench cases per category in the slice
    patience: int = 0  # stop after this many evaluations without a new best; 0 = never stop early
    prompts: str | None = None  # data files: eval prompts (the data.prompts format), encoded by `flashdistill cache`
    edits: str | None = None  # data files: eval edits (the data.edits format)
    judge: str = "auto"  # world | vlm | none; auto: world for the embedded world, none (samples only) for data files
    vlm_base_url: str | None = None  # eval.judge vlm: an OpenAI-compatible endpoint
    vlm_model: str | None = None
    vlm_api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the key (never the key itself)
    vlm_concurrency: int = 4

    def check(self, files: bool) -> None:
        require(self.every >= 0, "eval.every", "must be >= 0 (0 = off)")
        require(self.limit >= 1, "eval.limit", "must be >= 1")
        require(self.patience >= 0, "eval.patience", "must be >= 0 (0 = off)")
        require(self.judge in ("auto", "world", "vlm", "none"), "eval.judge",
                 f"must be auto, world, vlm or none, got {self.judge!r}")
        require(1 <= self.vlm_concurrency <= 256, "eval.vlm_concurrency", "must be in [1, 256]")
        require(files or not (self.prompts or self.edits), "eval.prompts / eval.edits",
                 "eval files go with data files (data.prompts / data.edits); the world evaluates on its val split")
        judge = self.resolved_judge(files)
        require(not files or judge != "world", "eval.judge", "the world judge scores the world's val split; "
                 "with data files use eval.judge vlm (scores) or none (samples only)")
        require(files or judge == "world", "eval.judge", "the embedded world is judged by the world judge")
        require(not (files and self.every) or bool(self.prompts or self.edits), "eval.every",
                 "with data files name what to sample: eval.prompts and/or eval.edits")
        require(judge != "vlm" or bool(self.vlm_base_url and self.vlm_model), "eval.judge",
                 "vlm needs eval.vlm_base_url and eval.vlm_model")
        require(not self.patience or judge != "none", "eval.patience", "needs scores: eval.judge vlm")

    def resolved_judge(self, files: bool) -> str:
        if self.judge != "auto":
            return self.judge
        return "none" if files else "world"
