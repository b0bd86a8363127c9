"""Training logs of a run: tensorboard scalars (and images) in `<out>/tb` and one JSON line per log in `log.jsonl`.

The distillation engine uses the same logger with its own scalar names (`scalars=`) and `log_eval` for its
periodic quick evaluation. A non-finite loss (a skipped step) is logged as is but kept out of the smoothed loss
and the window means.

On resume from step s, records after s (written by the killed run after its last checkpoint) and lines torn by
the kill are dropped from log.jsonl and tensorboard is told to purge them, so the logs of a resumed run read like
an uninterrupted one.
View with `tensorboard --logdir <out>/tb`.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path

import torch

SCALARS = ("loss", "loss_fm", "loss_repa", "lr", "grad_norm", "step_time")


class RunLogger:
    """`add(metrics, log_now)` once per step; a log line carries the window's mean loss and step time."""

    def __init__(self, out: Path, start: int, scalars: tuple[str, ...] = SCALARS):
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(out) / "log.jsonl"
        self._truncate(start)
        self.writer = SummaryWriter(str(Path(out) / "tb"), purge_step=start if start > 0 else None)
        self.scalars = scalars
        self.smoothed = float("nan")
        self._window: list[dict] = []

    def _truncate(self, start: int) -> None:
        """Keep the records up to `start`; a line that does not parse (torn by a kill mid-write) is dropped."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_bytes().decode("utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step", 0), (int, float)) and \
                    record.get("step", 0) <= start:
                keep.append(line)
        self.path.write_text("".join(line + "\n" for line in keep))

    def add(self, metrics: dict, log_now: bool) -> None:
        """One step's metrics; on a log step the window's means, the scalars and any `metrics["images"]` ({tag:
        (N, 3, H, W) in [-1, 1]}, shown side by side) go out. The images stay out of log.jsonl."""
        metrics = dict(metrics)
        images = metrics.pop("images", None) or {}
        loss = metrics["loss"]
        if math.isfinite(loss):
            # A short EMA of the loss for the progress bar: single-batch losses jump with t.
            self.smoothed = loss if self.smoothed != self.smoothed else 0.9 * self.smoothed + 0.1 * loss
            self._window.append(metrics)
        if not log_now:
            return
        step = metrics["step"]
        record = dict(metrics)
        if self._window:
            record["loss_mean"] = sum(m["loss"] for m in self._window) / len(self._window)
            record["step_time_mean"] = sum(m["step_time"] for m in self._window) / len(self._window)
            self.writer.add_scalar("train/loss_mean", record["loss_mean"], step)
        for name in self.scalars:
            if metrics.get(name) is not None:
                self.writer.add_scalar(f"train/{name}", metrics[name], step)
        for tag, rows in images.items():
            strip = torch.cat(list(rows.nan_to_num(0).clamp(-1, 1).add(1).div(2)), dim=2)  # (3, H, N*W)
            self.writer.add_image(tag, strip, step, dataformats="CHW")
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._window = []

    def log_eval(self, step: int, record: dict) -> None:
        """One evaluation record: numbers go to tensorboard under eval/, the whole record to log.jsonl."""
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"eval/{name}", value, step)
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, "kind": "eval", **record}) + "\n")

    def log_image(self, tag: str, path: str | Path, step: int) -> None:
        """A PNG (a grid of samples) to tensorboard."""
        import numpy as np
        from PIL import Image

        with Image.open(path) as img:
            self.writer.add_image(tag, np.asarray(img.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def hardware() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or None, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}
