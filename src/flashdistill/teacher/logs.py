"""Training logs of a teacher run: tensorboard scalars in `<out>/tb` and one JSON line per log in `<out>/log.jsonl`.

On resume from step s, records after s (written by the killed run after its last checkpoint) are dropped from
log.jsonl and tensorboard is told to purge them, so the logs of a resumed run read like an uninterrupted one.
View with `tensorboard --logdir <out>/tb`.
"""

from __future__ import annotations

import json
from pathlib import Path

SCALARS = ("loss", "lr", "grad_norm", "step_time")


class RunLogger:
    """`add(metrics, log_now)` once per step; a log line carries the window's mean loss and step time."""

    def __init__(self, out: Path, start: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / "log.jsonl"
        self._truncate(start)
        self.writer = SummaryWriter(str(Path(out) / "tb"), purge_step=start if start > 0 else None)
        self.smoothed = float("nan")
        self._window: list[dict] = []

    def _truncate(self, start: int) -> None:
        if not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= start]
        self.path.write_text("".join(line + "\n" for line in keep))

    def add(self, metrics: dict, log_now: bool) -> None:
        loss = metrics["loss"]
        # A short EMA of the loss for the progress bar: single-batch losses jump with t.
        self.smoothed = loss if self.smoothed != self.smoothed else 0.9 * self.smoothed + 0.1 * loss
        self._window.append(metrics)
        if not log_now:
            return
        step = metrics["step"]
        record = dict(metrics)
        record["loss_mean"] = sum(m["loss"] for m in self._window) / len(self._window)
        record["step_time_mean"] = sum(m["step_time"] for m in self._window) / len(self._window)
        for name in SCALARS:
            self.writer.add_scalar(f"train/{name}", metrics[name], step)
        self.writer.add_scalar("train/loss_mean", record["loss_mean"], step)
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._window = []

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
