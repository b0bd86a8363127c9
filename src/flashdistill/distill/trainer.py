"""The DMD distillation loop: `python -m flashdistill.distill.trainer RECIPE --out DIR [--resume] [--set k=v ...]`.

One iteration (paper §2.2 and §4.3; DMD2 conventions):
1. Batch `i` from the family's batch source (data/sources.py: the world, or the data files through the
   condition cache; T2I and edit rows at the recipe's ratio and composition); every random draw of
   the iteration (student step k, noises, DMD times) comes from `step_generator(seed, i)` for the global batch.
2. Generator: backward simulation to step k (`dmd.simulate`) gives x_θ; x_t = (1-t)·x_θ + t·ξ; x0_real from the
   λ_k-weighted teachers with CFG (eq. 5-7), x0_fake from the critic; loss 0.5·||x_θ - sg(x_θ - grad)||² with the
   normalised DMD gradient (eq. 4), plus the optional first-step flow matching (§6.1); AdamW, clipping, EMA.
3. Critic: `critic.updates` flow-matching updates (eq. 2) on the detached x_θ, each with fresh (t, noise).
Edit rows carry their source tokens through student, teachers and critic alike (`Cond.source`).

Failure handling: an iteration is all or nothing. The generator's step waits until its gradient and every critic
update are known finite; a non-finite loss or gradient norm anywhere skips the whole iteration (student, critic,
both optimizers and the EMA as they were before it; the critic is restored from a copy taken before its updates)
and is counted. After `dmd.max_bad_steps` bad iterations in a row the run stops with exit code 1 and says what to
change; checkpoints are not written during such a streak, and a newest checkpoint that no good iteration has run
from is set aside (`checkpoint.diverged`), so `--resume --set dmd.lr=...` continues from weights known to be good.
Exact resume: nothing but the checkpoint (student, EMA, critic, both AdamW states, iteration) carries state
between iterations, so `--resume` after a kill reaches the weights of an uninterrupted run.

Outputs in `--out`: `checkpoint/`, `log.jsonl` + `tb/` (losses, grad norms, seconds per part: student, teachers,
critic; eval scores), `eval/` (quick bench slices), `best/` and `student/` (exports, see `export.py`).
Under `torchrun --nproc_per_node=N` the same command runs data-parallel (see `roles.py`); with `run.parallel: fsdp`
every role is sharded (`sharding.py`) and the checkpoint is sharded too (`runtime/sharded.py`).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

from flashdistill.cliargs import Parser
from flashdistill.data.batches import TaskMix
from flashdistill.distill import dmd
from flashdistill.distill.evaluate import BenchScorer, BestTracker
from flashdistill.distill.export import CHECKPOINT_FILES, Student
from flashdistill.distill.guidance import Guidance
from flashdistill.distill.inputs import input_fingerprint
from flashdistill.distill.recipe import RESUMABLE_KEYS, Recipe, check_resume, load_recipe, resume_fingerprint
from flashdistill.distill.layouts import fsdp as sharding
from flashdistill.distill.layouts.base import Roles
from flashdistill.distill.layouts.build import build_roles
from flashdistill.errors import UserError, one_line
from flashdistill.files import out_dir, remove_stale_tmp
from flashdistill.flow import interpolate
from flashdistill.sampling import guided_velocity
from flashdistill.conditioning import Cond
from flashdistill.runfolder import claim_run
from flashdistill.runtime.checkpoint import find_checkpoint, load_state, read_state, restore_latest, save_state
from flashdistill.runtime.dist import Dist, destroy_distributed, setup_distributed, teardown_distributed
from flashdistill.runtime.guard import Snapshot, finish_backward, grad_sync
from flashdistill.runtime.inputs import ACCEPT_FLAG, check_inputs
from flashdistill.runtime.logs import RunLogger, hardware
from flashdistill.runtime import sharded as sharded_checkpoint
from flashdistill.runtime.resume import TrainingDiverged, diverged, retune
from flashdistill.runtime.steps import ema_update, step_generator

SCALARS = ("loss", "loss_critic", "grad_norm", "grad_norm_critic", "k", "skipped", "time_data", "time_student",
           "time_teachers", "time_critic", "step_time")


@dataclass
class Draws:
    """Every random draw of one iteration: student step k, backward-simulation noises, DMD and critic times."""

    k: int
    noises: torch.Tensor  # (K, B, C, H, W): z at t=1, then the re-noising draws
    t: torch.Tensor  # (B,) DMD perturbation times
    xi: torch.Tensor  # (B, C, H, W) DMD perturbation noise
    critic_t: torch.Tensor  # (U, B)
    critic_eps: torch.Tensor  # (U, B, C, H, W)

    def rows(self, sl: slice, device) -> Draws:
        return Draws(self.k, self.noises[:, sl].to(device), self.t[sl].to(device), self.xi[sl].to(device),
                     self.critic_t[:, sl].to(device), self.critic_eps[:, sl].to(device))


def draw(gen: torch.Generator, recipe: Recipe, batch_size: int, shape: tuple[int, ...]) -> Draws:
    """All draws for the global batch, in a fixed order: any rank slices the same numbers."""
    d, nfe, u = recipe.dmd, len(recipe.timesteps), recipe.critic.updates
    k = int(torch.randint(nfe, (1,), generator=gen))
    noises = torch.randn((nfe, batch_size, *shape), generator=gen)
    t = dmd.sample_dmd_t(batch_size, gen, d.t_min, d.t_max, d.t_shift)
    xi = torch.randn((batch_size, *shape), generator=gen)
    critic_t = torch.stack([dmd.sample_dmd_t(batch_size, gen, d.t_min, d.t_max, d.t_shift) for _ in range(u)])
    critic_eps = torch.randn((u, batch_size, *shape), generator=gen)
    return Draws(k, noises, t, xi, critic_t, critic_eps)


@dataclass
class Context:
    recipe: Recipe
    roles: Roles
    guidance: Guidance
    source: object  # flashdistill.data.sources: WorldSource | FileSource
    mix: TaskMix
    dist: Dist
    timers: dict[str, float]
    family: object = None  # distill/families.py: the teachers' CFG rule and the export
    snapshot: Snapshot = field(default_factory=Snapshot)  # the critic before its updates (reused buffers)

    @contextmanager
    def timed(self, part: str):
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        yield
        if self.dist.device.type == "cuda":
            torch.cuda.synchronize()
        self.timers[part] = self.timers.get(part, 0.0) + time.perf_counter() - start


def build_inputs(ctx: Context, step: int) -> tuple[torch.Tensor | None, Cond, Cond, Draws]:
    """This rank's rows of batch `step`: real images (for §6.1 only; None from data files), cond, uncond, draws."""
    d, dev = ctx.recipe.dmd, ctx.dist.device
    batch = ctx.source.batch(step, d.batch_size, ctx.dist.rows(d.batch_size))
    draws = draw(step_generator(d.seed, step), ctx.recipe, d.batch_size, ctx.source.shape)
    x = None if batch.x is None else batch.x.to(dev)
    return x, batch.cond.to(dev), batch.uncond.to(dev), draws.rows(ctx.dist.rows(d.batch_size), dev)


def micro_batches(rows: int, micro: int) -> list[slice]:
    """This rank's `rows` in passes of at most `micro` rows (`dmd.micro_batch`; 0 = one pass)."""
    size = micro or rows
    return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]


def generator_update(ctx: Context, x_data: torch.Tensor, cond: Cond, uncond: Cond, d: Draws) -> tuple:
    """Eq. 4/7 with backward simulation, up to the gradient: (x_θ detached, loss, grad norm, finite, teachers that
    ran). The rows run in micro-batches whose gradients add up to the whole batch's (each loss weighted by its share
    of the rows); `apply_generator` takes the step once the critic's updates have been finite too."""
    r, rc = ctx.roles, ctx.recipe
    r.opt_student.zero_grad(set_to_none=True)
    n = cond.batch_size
    parts = micro_batches(n, rc.dmd.micro_batch)
    xs, loss_sum, ran = [], 0.0, []
    for j, sl in enumerate(parts):
        with grad_sync(r.student_train, j == len(parts) - 1):
            x, loss, names = generator_rows(ctx, None if x_data is None else x_data[sl], cond.rows(sl),
                                            uncond.rows(sl), d.rows(sl, d.t.device))
            with ctx.timed("student"):
                (loss * ((sl.stop - sl.start) / n)).backward()  # under DDP the last one all-reduces
        xs.append(x)
        loss_sum += loss.item() * (sl.stop - sl.start) / n
        ran += [m for m in names if m not in ran]
    with ctx.timed("student"):
        ok, norm = finish_backward(r.student_train, r.opt_student, loss_sum, rc.dmd.grad_clip, ctx.dist)
    return torch.cat(xs), loss_sum, norm, ok, ran


def generator_rows(ctx: Context, x_data: torch.Tensor | None, cond: Cond, uncond: Cond, d: Draws) -> tuple:
    """One micro-batch of the generator update: (x_θ detached, its loss with a graph, teachers that ran)."""
    r, rc = ctx.roles, ctx.recipe
    with ctx.timed("student"):
        x, v, _ = dmd.simulate(r.student_train, d.noises, rc.timesteps, d.k, cond, rc.dmd.bf16, r.student)
    x_t = interpolate(x.detach(), d.xi, d.t)
    with ctx.timed("teachers"):
        weights = ctx.guidance.weights(d.k, cond.category)  # (b, M)
        any_rank = ctx.dist.any if sharding.active(rc, ctx.dist) else None  # same teacher calls on every rank
        bad: list[str] = []
        x0_real, ran = dmd.real_x0(r.teachers, weights, x_t, d.t, cond, uncond, rc.dmd.cfg_scale, rc.dmd.bf16,
                                   ctx.family.cfg_rule, any_rank, bad)
        if ctx.dist.any(bool(bad))[0]:
            check_teachers(ctx, ran, cond, uncond)
    with ctx.timed("critic"):
        x0_fake = dmd.fake_x0(r.critic, x_t, d.t, cond, rc.dmd.bf16)
    with ctx.timed("student"):
        grad = dmd.dmd_gradient(x, x0_real, x0_fake, rc.dmd.normalize)
        loss = dmd.generator_loss(x, grad)
        if rc.dmd.first_step_fm > 0 and d.k == 0:  # same k on every rank: the graphs agree under DDP
            loss = loss + rc.dmd.first_step_fm * dmd.first_step_fm_loss(v, d.noises[0], x_data)
    return x.detach(), loss, ran


@torch.no_grad()
def check_teachers(ctx: Context, names: list[str], cond: Cond, uncond: Cond) -> None:
    """A teacher's output held NaN or Inf (the DMD gradient's nan_to_num would hide it). On a diverged student's
    samples that is the student's fault, which the iteration guard handles; so each teacher that ran is run again on
    pure noise at t = 1 with the same conditions, and one whose output is still not finite stops the run, naming it
    (every rank makes the same calls)."""
    rc = ctx.recipe
    z = torch.randn((cond.batch_size, *ctx.source.shape), generator=torch.Generator().manual_seed(0)).to(
        ctx.dist.device)
    t = torch.ones(cond.batch_size, device=ctx.dist.device)
    broken = []
    for name in names:
        with dmd.autocast(z.device, rc.dmd.bf16):
            v = guided_velocity(ctx.roles.teachers[name], z, t, cond, uncond, rc.dmd.cfg_scale, ctx.family.cfg_rule)
        broken.append(not bool(torch.isfinite(v).all()))
    flags = ctx.dist.any(*broken) if names else ()
    culprits = [name for name, flag in zip(names, flags) if flag]
    if culprits:
        raise UserError(f"teachers.{culprits[0]}: its output holds NaN or Inf even on pure noise; its weights are "
                        f"broken. Stopped before any update that used it")


def apply_generator(ctx: Context) -> None:
    """The generator's step (its gradient is in place) and the EMA after it."""
    r = ctx.roles
    with ctx.timed("student"):
        r.opt_student.step()
        ema_update(r.ema, r.student, ctx.recipe.dmd.ema_decay)


def critic_update(ctx: Context, x: torch.Tensor, cond: Cond, d: Draws) -> tuple[float, float, bool, float]:
    """`critic.updates` flow-matching steps on the detached student samples, each over the batch's micro-batches:
    (mean loss, last norm, all finite, first loss). A non-finite update stops them and puts the critic and its
    optimizer back as before the first."""
    r, rc = ctx.roles, ctx.recipe
    losses, norm = [], float("nan")
    before = ctx.snapshot.take(r.critic, r.opt_critic) if rc.critic.updates > 1 else None
    parts = micro_batches(cond.batch_size, rc.dmd.micro_batch)
    with ctx.timed("critic"):
        for u in range(rc.critic.updates):
            r.opt_critic.zero_grad(set_to_none=True)
            loss = 0.0
            for j, sl in enumerate(parts):
                with grad_sync(r.critic_train, j == len(parts) - 1):
                    part = dmd.critic_loss(r.critic_train, x[sl], d.critic_eps[u, sl], d.critic_t[u, sl],
                                           cond.rows(sl), rc.dmd.bf16) * ((sl.stop - sl.start) / cond.batch_size)
                    part.backward()
                loss += part.item()
            ok, norm = finish_backward(r.critic_train, r.opt_critic, loss, rc.dmd.grad_clip, ctx.dist)
            losses.append(loss)
            if ok:
                r.opt_critic.step()
            else:
                if before is not None and u > 0:
                    before.restore(r.critic, r.opt_critic)
                return sum(losses) / len(losses), norm, False, losses[0]
    return sum(losses) / len(losses), norm, True, losses[0]


def train_iteration(ctx: Context, step: int) -> dict:
    """One generator update and its critic updates on batch `step`; returns the iteration's metrics."""
    start = time.perf_counter()
    ctx.timers.clear()
    with ctx.timed("data"):
        x_data, cond, uncond, d = build_inputs(ctx, step)
    x, loss_g, norm_g, ok_g, ran = generator_update(ctx, x_data, cond, uncond, d)
    nan = float("nan")
    loss_c, norm_c, ok_c, first_c = critic_update(ctx, x, cond, d) if ok_g else (nan, nan, False, nan)
    if ok_g and ok_c:
        apply_generator(ctx)
    else:
        ctx.roles.opt_student.zero_grad(set_to_none=True)
    dist = ctx.dist
    metrics = {"step": step + 1, "loss": dist.mean(loss_g), "loss_critic": dist.mean(loss_c), "grad_norm": norm_g,
               "grad_norm_critic": norm_c, "k": d.k, "skipped": int(not (ok_g and ok_c)), "teachers_run": ran,
               # the weights this iteration started from gave finite losses (its updates may still have failed)
               "weights_ok": bool(math.isfinite(dist.mean(loss_g)) and math.isfinite(dist.mean(first_c))),
               "lr": ctx.recipe.dmd.lr, "edit_rows": int(cond.has_source.sum())}
    metrics.update({f"time_{part}": seconds for part, seconds in ctx.timers.items()})
    metrics["step_time"] = time.perf_counter() - start
    return metrics


def checkpoint_files(recipe: Recipe, dist: Dist) -> tuple[str, ...]:
    """The files a complete checkpoint of this run holds: sharded (fsdp) or one file per role."""
    return sharded_checkpoint.FILES if sharding.active(recipe, dist) else CHECKPOINT_FILES


def save(ctx: Context, out: Path, done: int, meta: dict) -> None:
    """The checkpoint after `done` iterations: every rank writes its shards (fsdp), or rank 0 all of it."""
    roles = ctx.roles
    if sharding.active(ctx.recipe, ctx.dist):
        sharded_checkpoint.save_sharded(out, roles.modules(), roles.optimizers(), done, meta)
    elif ctx.dist.main:
        save_state(out, roles.modules(), roles.optimizers(), done, meta)


def restore(roles: Roles, recipe: Recipe, out: Path, resume: bool, dist: Dist, inputs: dict | None = None,
            accept_inputs: bool = False) -> tuple[int, dict]:
    """(first iteration, saved meta): 0 and {} for a fresh run, the checkpoint's for --resume (the previous
    checkpoint when the newest does not read back). Changed resumable keys (dmd.lr, ...) are applied and reported."""
    if dist.main:
        remove_stale_tmp(out)  # left by a kill during a checkpoint or export write
    dist.barrier()
    files = checkpoint_files(recipe, dist)
    other = CHECKPOINT_FILES if files != CHECKPOINT_FILES else sharded_checkpoint.FILES
    if find_checkpoint(out, files) is None and find_checkpoint(out, other) is not None:
        raise UserError(f"{out} holds a checkpoint of another run.parallel layout or world size: resume it with "
                        f"the run.parallel and torchrun ranks that wrote it")
    folder = find_checkpoint(out, files)
    if folder is None:
        if resume and dist.main:
            print(f"no checkpoint in {out}: starting from iteration 0", file=sys.stderr)
        return 0, {}
    if not resume:
        raise UserError(f"{out} already holds a checkpoint at iteration {read_state(folder)['step']}: pass --resume "
                        f"to continue it, or choose another --out")

    def load(folder: Path) -> dict:
        meta = read_state(folder)["meta"]
        changed = check_resume(meta, resume_fingerprint(recipe), recipe.to_dict(), "recipe", RESUMABLE_KEYS,
                               "recipe")
        changed += check_inputs(meta.get("inputs"), inputs, accept_inputs) if inputs else []
        if files == CHECKPOINT_FILES:
            saved = load_state(folder, roles.modules(), roles.optimizers())
        else:  # the saved moments are read into live optimizer states, created here as the first step would
            from flashdistill.distill.layouts.memory import materialize_optimizer_states

            materialize_optimizer_states(roles)
            saved = sharded_checkpoint.load_sharded(folder, roles.modules(), roles.optimizers())
        if changed and dist.main:
            print(f"resuming with changed {', '.join(changed)}", file=sys.stderr)
        return saved

    saved = restore_latest(out, files, load)
    retune(roles.opt_student, recipe.dmd.lr, recipe.dmd.weight_decay)
    retune(roles.opt_critic, recipe.critic.lr, recipe.critic.weight_decay)
    return int(saved["step"]), saved["meta"]


def count_bad(metrics: dict, health: dict, limit: int) -> None:
    """Track skipped iterations and the last whose starting weights gave finite losses (`last_good`, an iteration
    index: a checkpoint of that many iterations or fewer holds weights known to be good); raise TrainingDiverged
    after `limit` skipped in a row."""
    if metrics["weights_ok"]:
        health["last_good"] = metrics["step"] - 1
    if not metrics["skipped"]:
        health["bad_streak"] = 0
    else:
        health["bad_streak"] += 1
        health["skipped_total"] += 1
        if health["bad_streak"] >= limit:
            raise TrainingDiverged(
                f"{health['bad_streak']} iterations in a row were skipped for a non-finite loss or gradient (last: "
                f"iteration {metrics['step']}, generator loss {metrics['loss']:.4g}, critic loss "
                f"{metrics['loss_critic']:.4g}). Lower dmd.lr or critic.lr, or set dmd.grad_clip, then --resume")
    metrics["skipped_total"] = health["skipped_total"]


def evaluate(ctx: Context, scorer, tracker: BestTracker, logger: RunLogger | None, done: int) -> bool:
    """Quick evaluation of the EMA student, best kept; returns whether `eval.patience` says stop. A collective
    scorer (file_eval.FileEval) runs on every rank, the world's BenchScorer on rank 0; the result counts on rank 0."""
    start = time.perf_counter()
    result = None
    if getattr(scorer, "collective", False):
        result = scorer(ctx.roles.ema, done, ctx.dist)
    elif ctx.dist.main:
        result = scorer(Student(ctx.roles.ema, ctx.recipe.timesteps), done)
    score = None if result is None else result.get("score")
    is_best = bool(ctx.dist.broadcast(score is not None and tracker.beats(float(score), done)))
    if is_best:  # every rank: gathering a sharded EMA for the export is collective
        _export_best(ctx, tracker, float(ctx.dist.broadcast(score)), done)
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


def _export_best(ctx: Context, tracker: BestTracker, score: float, done: int) -> None:
    """The EMA student into best/ through the family's export (gathered first when sharded)."""
    exported = ctx.roles
    if sharding.active(ctx.recipe, ctx.dist):
        exported = sharding.gather_ema(ctx.roles, ctx.recipe, ctx.dist)
    if ctx.dist.main:
        info = {"recipe": ctx.recipe.to_dict(), "iteration": done, "weights": "best", "score": score}
        ctx.family.export(exported, tracker.folder, ctx.recipe.timesteps, info)
        tracker.record(score, done)
    ctx.dist.barrier()


def _meta(ctx: Context, health: dict, tracker: BestTracker, wall: float) -> dict:
    config = ctx.roles.student.config
    return {"fingerprint": resume_fingerprint(ctx.recipe), "recipe": ctx.recipe.to_dict(),
            "student": {"config": {f.name: getattr(config, f.name) for f in fields(config)},
                        "timesteps": ctx.recipe.timesteps},
            "evals_since_best": tracker.since_best, "wall_time_s": wall, **health}


def _scorer(recipe: Recipe, ctx: Context, out: Path, dist: Dist):
    """The quick evaluation of this run: the world's val slice (rank 0), or samples of the eval files (every rank,
    judged on rank 0 by the VLM judge when eval.judge is vlm)."""
    if not recipe.data.uses_files():
        if not dist.main:
            return None
        return BenchScorer(out / "eval", recipe.eval.limit, ctx.roles.student.config.resolution, ctx.source.encoder)
    from flashdistill.distill.file_eval import FileEval

    judge = None
    e = recipe.eval
    if e.resolved_judge(True) == "vlm" and dist.main:
        from flashdistill.bench.vlm import VLMJudge

        judge = VLMJudge(e.vlm_base_url, e.vlm_model, api_key_env=e.vlm_api_key_env, concurrency=e.vlm_concurrency)
    return FileEval(recipe, ctx.family, out / "eval", dist.device, judge)


def _context(recipe: Recipe, roles: Roles, dist: Dist, out: Path, encoder) -> Context:
    family = roles.family
    if family is None:
        from flashdistill.distill.families import family_for

        family = family_for(recipe)
    source = family.source(recipe, out, encoder, roles.student.config)
    if hasattr(source, "check_rows"):  # before the first iteration: can a rank's batch stack its edit sources?
        source.check_rows(len(range(recipe.dmd.batch_size)[dist.rows(recipe.dmd.batch_size)]))
    guidance = Guidance(recipe.guidance, list(recipe.teachers))
    return Context(recipe, roles, guidance, source, recipe.task_mix(), dist, {}, family)


def train_distill(recipe: Recipe, out: Path, resume: bool = False, encoder=None, scorer=None,
                  command: str | None = None, stop_after: int | None = None, accept_inputs: bool = False) -> dict:
    """Distill (or continue distilling) into `out`; returns a summary. `encoder` replaces MiniLM (tests share one),
    `scorer` the quick-eval BenchScorer; `stop_after` ends this call after that many iterations, checkpointed.
    `out` is claimed first (flashdistill.runfolder): another kind of run there, or another process writing it, is
    refused; under torchrun rank 0 holds the claim and the other ranks only check."""
    with claim_run(out, "distill", enabled=os.environ.get("RANK", "0") == "0"):
        return _train_distill(recipe, Path(out), resume, encoder, scorer, command, stop_after, accept_inputs)


def _train_distill(recipe: Recipe, out: Path, resume: bool, encoder, scorer, command: str | None,
                   stop_after: int | None, accept_inputs: bool) -> dict:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    dist = setup_distributed(recipe.run.device, recipe.dmd.batch_size)
    for note in getattr(recipe, "notes", []) if dist.main else []:
        print(f"note: {note}", file=sys.stderr)
    roles = build_roles(recipe, dist)  # first: a bad teacher path should not leave an empty run folder behind
    if dist.main:
        out_dir(out)
    dist.barrier()
    inputs = input_fingerprint(recipe, roles.family)  # taken once: the checkpoints record what the run started on
    start, meta = restore(roles, recipe, out, resume, dist, inputs, accept_inputs)
    total = recipe.dmd.iterations
    if start > total:
        raise UserError(f"dmd.iterations: {total} is fewer than the {start} iterations the checkpoint has done")
    end = total if stop_after is None else max(start, min(total, stop_after))
    ctx = _context(recipe, roles, dist, out, encoder)
    tracker = BestTracker.open(out, meta.get("evals_since_best", 0))
    if scorer is None and recipe.eval.every:
        scorer = _scorer(recipe, ctx, out, dist)
    health = {"bad_streak": meta.get("bad_streak", 0), "skipped_total": meta.get("skipped_total", 0),
              "last_good": meta.get("last_good", start - 1)}
    wall_before, t0, metrics, done, stop = meta.get("wall_time_s", 0.0), time.perf_counter(), {}, start, False
    logger = RunLogger(out, start, SCALARS) if dist.main else None
    quiet = {} if dist.main else {"disable": True}  # rank 0 reports; TQDM_DISABLE=1 silences it too
    bar = tqdm(total=total, initial=start, desc="distill", unit="it", dynamic_ncols=True, **quiet)
    try:
        for step in range(start, end):
            metrics = train_iteration(ctx, step)
            try:
                count_bad(metrics, health, recipe.dmd.max_bad_steps)
            except TrainingDiverged as err:
                raise (diverged(err, out, health["last_good"], "iteration", checkpoint_files(recipe, dist)) if dist.main
                       else err) from None
            done = step + 1
            if logger is not None:
                logger.add(metrics, log_now=done % recipe.run.log_every == 0 or done in (1, end))
                bar.update(1)
                bar.set_postfix(loss=f"{logger.smoothed:.4f}", critic=f"{metrics['loss_critic']:.4f}")
            if recipe.eval.every and done % recipe.eval.every == 0:
                stop = evaluate(ctx, scorer, tracker, logger, done)
            periodic = done % recipe.run.checkpoint_every == 0 and not health["bad_streak"]
            if periodic or done == end or stop:  # no periodic checkpoint of weights a bad streak has not cleared
                ctx.source.flush()  # so a resumed run finds this run's embeddings on disk
                wall = wall_before + time.perf_counter() - t0
                save(ctx, out, done, {**_meta(ctx, health, tracker, wall), "last_loss": metrics["loss"],
                                      "inputs": inputs})
                dist.barrier()
            if stop:
                break
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    wall = wall_before + time.perf_counter() - t0
    student = None
    exported = roles
    if (done == total or stop) and sharding.active(recipe, dist):
        exported = sharding.gather_ema(roles, recipe, dist)  # collective: the EMA unsharded on rank 0
    if (done == total or stop) and dist.main:
        info = {"weights": "ema", "iteration": done, "ema_decay": recipe.dmd.ema_decay, "recipe": recipe.to_dict(),
                "command": command, "wall_time_s": round(wall, 1), "hardware": hardware(), "ranks": dist.world}
        student = str(ctx.family.export(exported, out / "student", recipe.timesteps, info))
    dist.barrier()
    return {"iterations": done, "resumed_from": start, "final_loss": metrics.get("loss", meta.get("last_loss")),
            "wall_time_s": wall,
            "skipped_total": health["skipped_total"], "best_score": tracker.best if tracker.best_iteration >= 0
            else None, "best_iteration": tracker.best_iteration, "student": student, "stopped_early": stop}


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Distill teachers into a few-step student with DMD "
                                                            "(step-wise multi-teacher guidance, task mixture).")
    parser.add_argument("recipe", metavar="RECIPE", help="distillation recipe YAML (see configs/flash.yaml)")
    parser.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint exactly")
    parser.add_argument(ACCEPT_FLAG, action="store_true", help="with --resume: continue although the teachers' "
                        "weights or the data files differ from the checkpoint's (refused otherwise)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="dotted recipe overrides, e.g. tasks.ratio=7:3 dmd.iterations=200")
    return parser


def main_distill(argv: list[str] | None = None, prog: str = "flashdistill distill") -> int:
    """CLI entry: returns the exit code (0 done, 1 diverged, 2 bad input). Under torchrun each rank ends here with
    that code (roles.teardown_distributed); an uncaught exception still propagates with its traceback."""
    # Before CUDA starts: expandable segments keep fragmentation low as micro-batches of different token counts (T2I
    # and edit rows) come and go: at 20B reserved ran 4-6 % above allocated with it, up to 18 % without (README).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        code = _main_distill(argv, prog)
    except BaseException:
        destroy_distributed()
        raise
    return teardown_distributed(code)


def _main_distill(argv: list[str] | None, prog: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        recipe = load_recipe(args.recipe, args.overrides)
        out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
        summary = train_distill(recipe, out, args.resume, command=f"{prog} {shlex.join(argv)}",
                                accept_inputs=args.accept_changed_inputs)
    except UserError as err:
        if main_rank:
            print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written: one line, not a traceback
        if main_rank:
            print(f"error: {err.filename + ': ' if err.filename else ''}{err.strerror or err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        if main_rank:
            print(f"error: distillation diverged: {one_line(err)}", file=sys.stderr)
        return 1
    if main_rank:
        best = summary["best_score"]
        print(f"student after {summary['iterations']} iterations ({summary['wall_time_s'] / 60:.1f} min, "
              f"{summary['skipped_total']} skipped) -> {summary['student']}"
              + ("" if best is None else f"; best quick-eval score {best:.3f} at iteration "
                                         f"{summary['best_iteration']} -> {out / 'best'}"))
    return 0


if __name__ == "__main__":
    sys.exit(main_distill())
