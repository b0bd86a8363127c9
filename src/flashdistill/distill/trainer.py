"""The DMD distillation run: `flashdistill distill RECIPE --out DIR [--resume] [--set k=v ...]`.

A run is a job of the one training loop (flashdistill.runtime.loop, shared with teacher training), whose step is
one DMD iteration (`iteration.py`: generator update with backward simulation, critic updates, all or nothing).
This file says what is the run's own: its checkpoint (student, EMA, critic, both AdamW states, the iteration),
restoring it, the quick evaluation with the best student kept, and the export.

Failure handling: after `dmd.max_bad_steps` skipped iterations in a row the run stops with exit code 1 and says
what to change; checkpoints are not written during such a streak, and a newest checkpoint that no good iteration
has run from is set aside (`checkpoint.diverged`), so `--resume --set dmd.lr=...` continues from weights known to
be good. Exact resume: nothing but the checkpoint carries state between iterations, so `--resume` after a kill
reaches the weights of an uninterrupted run.

Outputs in `--out`: `checkpoint/`, `log.jsonl` + `tb/` (losses, grad norms, the DMD gradient's norm, seconds per
part: student, teachers, critic; x_θ / x0_real / x0_fake images; eval scores), `eval/` (quick evaluations),
`best/` and `student/` (exports, see `export.py`). Under `torchrun --nproc_per_node=N` the same command runs
data-parallel (see `layouts/`); with `run.parallel: fsdp` every role is sharded (`layouts/fsdp.py`) and the checkpoint
is sharded too (`runtime/sharded.py`).

The quick evaluation's scorer (`Scorer`) is built above the engine (the CLI, the quickstart, the studies:
`make_scorer`) and handed in: the engine never imports a judge.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from pathlib import Path
from typing import Protocol

import torch

from flashdistill.distill.export import CHECKPOINT_FILES
from flashdistill.distill.inputs import input_fingerprint
from flashdistill.distill.iteration import SCALARS, Context, build_context, train_iteration
from flashdistill.distill.layouts import fsdp
from flashdistill.distill.layouts.base import Roles
from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.recipe import RESUMABLE_KEYS, WHOLE_TABLES, Recipe, resume_fingerprint
from flashdistill.errors import UserError
from flashdistill.files import out_dir
from flashdistill.models.compiled import compile_errors
from flashdistill.runfolder import claim_run
from flashdistill.runtime import sharded as sharded_checkpoint
from flashdistill.runtime.best import BestTracker
from flashdistill.runtime.checkpoint import find_checkpoint, load_state, save_state
from flashdistill.runtime.dist import Dist, setup_distributed
from flashdistill.runtime.inputs import check_inputs
from flashdistill.runtime.logs import hardware
from flashdistill.runtime.loop import Cadence, checked_load, restore, run
from flashdistill.runtime.resume import retune


class Scorer(Protocol):
    """The quick evaluation (bench/quick.py `BenchScorer`: world-judged val slices; bench/file_eval.py `FileEval`:
    samples of the eval files, VLM-judged). Called on every rank with the EMA student, the iterations done and the
    ranks; a scorer that runs on rank 0 alone returns None on the others. The result (rank 0's counts) has a float
    `"score"`, higher is better, or no score (samples only); `"grid"`, an image path, is logged when present."""

    def __call__(self, ema, iteration: int, dist: Dist) -> dict | None: ...


LAYOUTS = (CHECKPOINT_FILES, sharded_checkpoint.FILES)  # the files of a complete checkpoint: per role, or sharded


def checkpoint_files(parallel: str, dist: Dist) -> tuple[str, ...]:
    """The files a complete checkpoint of this run holds: sharded (fsdp) or one file per role."""
    return sharded_checkpoint.FILES if fsdp.active(parallel, dist) else CHECKPOINT_FILES


def holds_checkpoint(out: Path) -> bool:
    """Whether `out` holds a complete checkpoint of either layout (restore_run refuses a layout the recipe's is not)."""
    return any(find_checkpoint(out, files) is not None for files in LAYOUTS)


def save(ctx: Context, out: Path, done: int, meta: dict) -> None:
    """The checkpoint after `done` iterations: every rank writes its shards (fsdp), or rank 0 all of it."""
    roles = ctx.roles
    if fsdp.active(ctx.recipe.run.parallel, ctx.dist):
        sharded_checkpoint.save_sharded(out, roles.modules(), roles.optimizers(), done, meta)
    elif ctx.dist.main:
        save_state(out, roles.modules(), roles.optimizers(), done, meta)


def _read_weights(roles: Roles, files: tuple[str, ...]):
    """`read(folder)` for the loop's restore: one file per role, or the shards into live optimizer states (created
    here as the first step would)."""

    def read(folder: Path) -> dict:
        if files == CHECKPOINT_FILES:
            return load_state(folder, roles.modules(), roles.optimizers())
        from flashdistill.distill.layouts.memory import materialize_optimizer_states

        materialize_optimizer_states(roles)
        return sharded_checkpoint.load_sharded(folder, roles.modules(), roles.optimizers())

    return read


def restore_run(roles: Roles, recipe: Recipe, out: Path, resume: bool, dist: Dist, inputs: dict | None = None,
                accept_inputs: bool = False) -> tuple[int, dict]:
    """(first iteration, saved meta): 0 and {} for a fresh run, the checkpoint's for --resume (the previous
    checkpoint when the newest does not read back). Changed resumable keys (dmd.lr, ...) are applied and reported;
    changed teacher weights or data files are refused unless `accept_inputs`."""
    files = checkpoint_files(recipe.run.parallel, dist)
    other = next(layout for layout in LAYOUTS if layout != files)
    if find_checkpoint(out, files) is None and find_checkpoint(out, other) is not None:
        raise UserError(f"{out} holds a checkpoint of another run.parallel layout or world size: resume it with "
                        f"the run.parallel and torchrun ranks that wrote it")
    more = (lambda meta: check_inputs(meta.get("inputs"), inputs, accept_inputs)) if inputs else None
    load = checked_load(recipe.to_dict(), resume_fingerprint(recipe), "recipe", RESUMABLE_KEYS, WHOLE_TABLES,
                        _read_weights(roles, files), more, dist.main)
    start, meta = restore(out, files, resume, load, "iteration", dist.main, dist.barrier)
    if start or meta:
        retune(roles.opt_student, recipe.dmd.lr, recipe.dmd.weight_decay)
        retune(roles.opt_critic, recipe.critic.lr, recipe.critic.weight_decay)
    return start, meta


class DistillJob:
    """A distillation run as a job of the one training loop (flashdistill.runtime.loop)."""

    name, unit, bar_unit = "distill", "iteration", "it"

    def __init__(self, ctx: Context, out: Path, tracker: BestTracker, scorer: Scorer | None, inputs: dict | None):
        self.ctx, self.out, self.tracker, self.scorer, self.inputs = ctx, out, tracker, scorer, inputs
        self.checkpoint_files = checkpoint_files(ctx.recipe.run.parallel, ctx.dist)

    def step(self, index: int) -> dict:
        every = self.ctx.recipe.run.log_every
        self.ctx.peek = self.ctx.dist.main and ((index + 1) % every == 0 or index == 0)
        with compile_errors() if self.ctx.recipe.run.compile != "none" else nullcontext():  # one line, not a trace
            metrics = train_iteration(self.ctx, index)
        peeked = self.ctx.peeked
        if peeked and peeked["x"].shape[1] == 3:  # pixel space: the rows are images
            metrics["images"] = {"dmd/x_student": peeked["x"], "dmd/x0_real": peeked["x0_real"],
                                 "dmd/x0_fake": peeked["x0_fake"]}
        return metrics

    def advice(self, metrics: dict) -> str:
        return (f"generator loss {metrics['loss']:.4g}, critic loss {metrics['loss_critic']:.4g}). Lower dmd.lr "
                f"or critic.lr, or set dmd.grad_clip, then --resume")

    def postfix(self, metrics: dict, smoothed: float) -> dict:
        return {"loss": f"{smoothed:.4f}", "critic": f"{metrics['loss_critic']:.4f}"}

    def save(self, done: int, meta: dict) -> None:
        ctx = self.ctx
        ctx.source.flush()  # so a resumed run finds this run's embeddings on disk
        config = ctx.roles.student.config
        own = {"fingerprint": resume_fingerprint(ctx.recipe), "recipe": ctx.recipe.to_dict(),
               "student": {"config": {f.name: getattr(config, f.name) for f in fields(config)},
                           "timesteps": ctx.recipe.timesteps},
               "evals_since_best": self.tracker.since_best}
        save(ctx, self.out, done, {**own, **meta, "inputs": self.inputs})

    def evaluate(self, done: int, logger) -> bool:
        """Quick evaluation of the EMA student, best kept; returns whether `eval.patience` says stop. The scorer is
        called on every rank (`Scorer`); the result counts on rank 0."""
        ctx, tracker, start = self.ctx, self.tracker, time.perf_counter()
        result = self.scorer(ctx.roles.ema, done, ctx.dist)
        score = None if result is None else result.get("score")
        is_best = bool(ctx.dist.broadcast(score is not None and tracker.beats(float(score), done)))
        if is_best:  # every rank: gathering a sharded EMA for the export is collective
            self.export_best(float(ctx.dist.broadcast(score)), done)
        stop = False
        if ctx.dist.main:
            if score is not None and not is_best:
                tracker.since_best += 1
            record = {**result, "best": tracker.best, "is_best": is_best, "eval_time": time.perf_counter() - start}
            logger.log_eval(done, record)
            if result.get("grid"):
                logger.log_image("eval/samples", result["grid"], done)
            patience = ctx.recipe.eval.patience
            stop = patience > 0 and tracker.since_best >= patience
            if stop:
                print(f"stopping at iteration {done}: no better quick-eval score for {patience} evaluations (best "
                      f"{tracker.best:.3f} at iteration {tracker.best_iteration}, kept in best/)", file=sys.stderr)
        return bool(ctx.dist.broadcast(stop))

    def export_best(self, score: float, done: int) -> None:
        """The EMA student into best/ through the family's export (gathered first when sharded)."""
        ctx = self.ctx
        info = {"recipe": ctx.recipe.to_dict(), "iteration": done, "weights": "best", "score": score}
        if self.export(self.tracker.folder, info):
            self.tracker.record(score, done)
        ctx.dist.barrier()

    def export(self, folder: Path, info: dict) -> Path | None:
        """The EMA student into `folder` by the family's export on rank 0 (a sharded EMA is gathered first, on
        every rank); rank 0 gets the folder, the other ranks None."""
        ctx, exported = self.ctx, self.ctx.roles
        if fsdp.active(ctx.recipe.run.parallel, ctx.dist):
            exported = fsdp.gather_ema(ctx.roles, ctx.recipe, ctx.dist)
        if not ctx.dist.main:
            return None
        return ctx.family.export(exported, folder, ctx.recipe.timesteps, info)


def train_distill(recipe: Recipe, out: Path, resume: bool = False, encoder=None, scorer=None,
                  command: str | None = None, stop_after: int | None = None, accept_inputs: bool = False,
                  make_scorer=None) -> dict:
    """Distill (or continue distilling) into `out`; returns a summary. `encoder` replaces MiniLM (tests share one).
    With `eval.every`, the quick evaluation uses `scorer`, or the one `make_scorer(recipe, ctx, out)` builds once the
    run's roles and batch source exist (flashdistill.bench.quick.make_scorer). `stop_after` ends this call after
    that many iterations, checkpointed. `out` is claimed first (flashdistill.runfolder): another kind of run there,
    or another process writing it, is refused; under torchrun rank 0 holds the claim and the other ranks only
    check."""
    with claim_run(out, "distill", enabled=os.environ.get("RANK", "0") == "0"):
        return _train_distill(recipe, Path(out), resume, encoder, scorer, make_scorer, command, stop_after,
                              accept_inputs)


def _train_distill(recipe: Recipe, out: Path, resume: bool, encoder, scorer, make_scorer, command: str | None,
                   stop_after: int | None, accept_inputs: bool) -> dict:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    dist = setup_distributed(recipe.run.device, recipe.dmd.batch_size, recipe.run.parallel == "fsdp")
    for note in recipe.notes if dist.main else []:
        print(f"note: {note}", file=sys.stderr)
    roles = build_roles(recipe, dist)  # first: a bad teacher path should not leave an empty run folder behind
    if dist.main:
        out_dir(out)
    dist.barrier()
    inputs = input_fingerprint(recipe, roles.family)  # taken once: the checkpoints record what the run started on
    start, meta = restore_run(roles, recipe, out, resume, dist, inputs, accept_inputs)
    total = recipe.dmd.iterations
    if start > total:
        raise UserError(f"dmd.iterations: {total} is fewer than the {start} iterations the checkpoint has done")
    end = total if stop_after is None else max(start, min(total, stop_after))
    ctx = build_context(recipe, roles, dist, out, encoder)
    if scorer is None and recipe.eval.every:
        if make_scorer is None:
            raise ValueError("eval.every is set: pass train_distill a scorer or make_scorer "
                             "(flashdistill.bench.quick.make_scorer)")
        scorer = make_scorer(recipe, ctx, out)
    job = DistillJob(ctx, out, BestTracker.open(out, meta.get("evals_since_best", 0)), scorer, inputs)
    cadence = Cadence(recipe.run.log_every, recipe.run.checkpoint_every, recipe.eval.every, recipe.dmd.max_bad_steps)
    ran = run(job, out, start, end, total, meta, cadence, SCALARS, dist.main, dist.barrier)
    student = None
    if ran.done == total or ran.stopped:
        info = {"weights": "ema", "iteration": ran.done, "ema_decay": recipe.dmd.ema_decay,
                "recipe": recipe.to_dict(), "command": command, "wall_time_s": round(ran.wall_time_s, 1),
                "hardware": hardware(), "ranks": dist.world}
        folder = job.export(out / "student", info)
        student = None if folder is None else str(folder)
    dist.barrier()
    tracker = job.tracker
    return {"iterations": ran.done, "resumed_from": start,
            "final_loss": ran.metrics.get("loss", meta.get("last_loss")), "wall_time_s": ran.wall_time_s,
            "skipped_total": ran.health.skipped_total,
            "best_score": tracker.best if tracker.best_iteration >= 0 else None,
            "best_iteration": tracker.best_iteration, "student": student, "stopped_early": ran.stopped}
