"""The one training loop: teacher training (`teacher/train.py`) and DMD distillation (`distill/trainer.py`).

The loop owns what every run does the same way: restoring from `--resume`, the progress bar, logs (`RunLogger`),
the divergence streak and setting aside a checkpoint no good step ran from, the checkpoint cadence, the quick
evaluation hook and its early stop, `stop_after` (a time-sliced job) and the wall time. A job supplies only what is
its own (the `Job` protocol): one step, what its checkpoint holds and how it is written, its evaluation.

A step returns its metrics: `step` (iterations done), `loss`, and optionally `skipped` (the step was not applied: a
non-finite loss or gradient) and `weights_ok` (the weights the step started from gave finite losses). A step may
also raise TrainingDiverged itself (the teacher does, on its first bad step).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from flashdistill.errors import UserError
from flashdistill.files import remove_stale_tmp
from flashdistill.runtime.checkpoint import find_checkpoint, read_state, restore_latest
from flashdistill.runtime.logs import RunLogger
from flashdistill.runtime.resume import TrainingDiverged, check_resume, diverged


@dataclass
class Health:
    """The divergence bookkeeping a checkpoint carries: skipped steps in a row and in all, and `last_good`, the
    last step index whose starting weights gave finite losses (a checkpoint of that many steps or fewer holds weights
    known to be good)."""

    bad_streak: int = 0
    skipped_total: int = 0
    last_good: int = -1

    @classmethod
    def from_meta(cls, meta: dict, start: int) -> Health:
        return cls(meta.get("bad_streak", 0), meta.get("skipped_total", 0), meta.get("last_good", start - 1))

    def count(self, metrics: dict, limit: int, unit: str, advice: Callable[[dict], str]) -> None:
        """Take one step's metrics in; TrainingDiverged after `limit` skipped steps in a row (`advice(metrics)`
        ends the message: the losses and what to change)."""
        if metrics.get("weights_ok", True):
            self.last_good = metrics["step"] - 1
        if "skipped" not in metrics:  # a job that raises on its first bad step (the teacher) skips none
            return
        if not metrics["skipped"]:
            self.bad_streak = 0
        else:
            self.bad_streak += 1
            self.skipped_total += 1
            if self.bad_streak >= limit:
                raise TrainingDiverged(f"{self.bad_streak} {unit}s in a row were skipped for a non-finite loss or "
                                       f"gradient (last: {unit} {metrics['step']}, {advice(metrics)}")
        metrics["skipped_total"] = self.skipped_total


@dataclass
class Cadence:
    """How often the loop logs, checkpoints and evaluates (0 = never evaluate), and the bad-step limit."""

    log_every: int
    checkpoint_every: int
    eval_every: int = 0
    max_bad_steps: int = 1


class Job(Protocol):
    """What a training job gives the loop (see `run`)."""

    name: str  # the progress bar's label: "teacher", "distill"
    unit: str  # "step" or "iteration": the messages' word
    bar_unit: str  # the progress bar's: "step", "it"
    checkpoint_files: tuple[str, ...]  # what a complete checkpoint of this job holds

    def step(self, index: int) -> dict: ...

    def advice(self, metrics: dict) -> str: ...  # after a bad streak: the losses, then what to change

    def postfix(self, metrics: dict, smoothed: float) -> dict: ...

    def evaluate(self, done: int, logger: RunLogger | None) -> bool: ...  # True: stop early

    def save(self, done: int, meta: dict) -> None: ...  # meta: the loop's bookkeeping; the job adds its own


@dataclass
class Outcome:
    """How a call of `run` ended: steps done when it returned, the last metrics, wall time of the whole run (all
    resumed calls), whether the evaluation stopped it early, and its health."""

    start: int
    done: int
    metrics: dict
    wall_time_s: float
    stopped: bool
    health: Health


def restore(out: Path, files: tuple[str, ...], resume: bool, load: Callable[[Path], dict], unit: str,
            main: bool = True, barrier: Callable[[], None] = lambda: None) -> tuple[int, dict]:
    """(first step, saved meta): 0 and {} for a fresh run, the checkpoint's for --resume (the previous checkpoint
    when the newest does not read back: `load(folder)` raising a read error). A fresh run into a folder that holds a
    checkpoint is refused. Under torchrun only rank 0 (`main`) clears temporaries and prints."""
    if main:
        remove_stale_tmp(out)  # left by a kill during a checkpoint or export write
    barrier()
    folder = find_checkpoint(out, files)
    if folder is None:
        if resume and main:
            print(f"no checkpoint in {out}: starting from {unit} 0", file=sys.stderr)
        return 0, {}
    if not resume:
        step = read_state(folder)["step"] if (folder / "state.json").is_file() else "?"
        raise UserError(f"{out} already holds a checkpoint at {unit} {step}: pass --resume to continue it, or "
                        f"choose another --out")
    saved = restore_latest(out, files, load)
    return int(saved["step"]), saved["meta"]


def checked_load(settings: dict, fingerprint: dict, what: str, resumable: tuple[str, ...], whole: tuple[str, ...],
                 read: Callable[[Path], dict], more_checks: Callable[[dict], list[str]] | None = None,
                 main: bool = True) -> Callable[[Path], dict]:
    """`load(folder)` for `restore`: refuse a checkpoint whose run-defining settings differ (`check_resume`; `what`
    is the meta key and the word: "recipe", "config"; tables under a `whole` key compare as one value), run
    `more_checks(meta)` (more changed items), read the weights with `read(folder)` and report what changed."""

    def load(folder: Path) -> dict:
        meta = read_state(folder)["meta"]
        changed = check_resume(meta, fingerprint, settings, what, resumable, what, whole)
        changed += more_checks(meta) if more_checks else []
        saved = read(folder)
        if changed and main:
            print(f"resuming with changed {', '.join(changed)}", file=sys.stderr)
        return saved

    return load


def run(job: Job, out: Path, start: int, end: int, total: int, meta: dict, cadence: Cadence,
        scalars: tuple[str, ...] | None = None, main: bool = True,
        barrier: Callable[[], None] = lambda: None) -> Outcome:
    """Steps `start` .. `end - 1` of a `total`-step run, from the checkpoint meta `meta` ({} when fresh). A
    checkpoint is written every `cadence.checkpoint_every` steps (not during a bad streak: those weights are not yet
    known to be good), at `end` and on an early stop. A divergence sets aside a checkpoint no good step ran from and
    raises TrainingDiverged with what `--resume` will do (rank 0 only)."""
    health = Health.from_meta(meta, start)
    wall_before, t0, metrics, done, stop = meta.get("wall_time_s", 0.0), time.perf_counter(), {}, start, False
    logger = (RunLogger(out, start, scalars) if scalars else RunLogger(out, start)) if main else None
    quiet = {} if main else {"disable": True}  # rank 0 reports; TQDM_DISABLE=1 silences it too
    bar = tqdm(total=total, initial=start, desc=job.name, unit=job.bar_unit, dynamic_ncols=True, **quiet)
    try:
        for index in range(start, end):
            try:
                metrics = job.step(index)
                health.count(metrics, cadence.max_bad_steps, job.unit, job.advice)
            except TrainingDiverged as err:
                raise (diverged(err, out, health.last_good, job.unit, job.checkpoint_files) if main
                       else err) from None
            done = index + 1
            if logger is not None:
                logger.add(metrics, log_now=done % cadence.log_every == 0 or done in (1, end))
                bar.update(1)
                bar.set_postfix(**job.postfix(metrics, logger.smoothed))
            if cadence.eval_every and done % cadence.eval_every == 0:
                stop = job.evaluate(done, logger)
            periodic = done % cadence.checkpoint_every == 0 and not health.bad_streak
            if periodic or done == end or stop:
                wall = wall_before + time.perf_counter() - t0
                job.save(done, {**asdict(health), "wall_time_s": wall, "last_loss": metrics["loss"]})
                barrier()
            if stop:
                break
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    return Outcome(start, done, metrics, wall_before + time.perf_counter() - t0, stop, health)
