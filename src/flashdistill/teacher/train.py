"""Flow-matching teacher training on the embedded world: `flashdistill teacher train CONFIG --out DIR`.

One step (paper eq. 2): batch `step` from `make_batch` (joint T2I + edit rows), prompts dropped to "" with
probability `text_dropout` and edit sources dropped with `source_dropout` (the row then trains as T2I: CFG's
unconditional branch for text, a source-free prior for edits), t from the logit-normal + shift of
`flashdistill.flow.sample_training_t`, z_t = (1-t)·x + t·eps and loss = ||v_θ(z_t, t, c) - (eps - x)||².
AdamW with linear warmup + cosine decay, global-norm clipping, and an EMA of the weights after every step.

Exact resume: batch choice is a pure function of (seed, step) and every other draw (dropout, t, eps) comes from a
torch.Generator seeded by (seed, step), so nothing but the checkpoint (weights, EMA, optimizer, scheduler, step)
carries state from one step to the next. A run killed at any point and resumed with `--resume` reaches the weights
of an uninterrupted run. Checkpoints are atomic and pickle-free (see `checkpoint.py`). A NaN/Inf loss or gradient
raises TrainingDiverged before the step touches weights, optimizer, scheduler or EMA, and a checkpoint of weights
no finite step ran from is set aside (`diverged`), so `--resume --set train.lr=...` restarts from good weights.

Outputs in `--out`: `checkpoint/`, `tb/` (tensorboard: loss, lr, grad norm, step time), `log.jsonl`, and at the
end `teacher/` = the EMA weights (FlowModel.save_pretrained) + `teacher.json` (config, steps, wall time, hardware,
command). Timestep choice: logit-normal(0, 1) times (SD3: best among the densities it compared; it concentrates
training where the velocity is least predictable) with shift 1, because 32x32 images are 256 tokens, the size at
which SD3's resolution-dependent shift rule is anchored at 1; a sampler should use the `shift` in teacher.json.
"""

from __future__ import annotations

import copy
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from flashdistill.conditioning import Cond
from flashdistill.data.batches import Batch, make_batch
from flashdistill.errors import UserError
from flashdistill.files import swap_in
from flashdistill.flow import flow_matching_loss, interpolate, sample_training_t, velocity_target
from flashdistill.models.lora import add_lora
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.text import open_text_cache
from flashdistill.runfolder import claim_run
from flashdistill.runtime.checkpoint import load_state, save_state
from flashdistill.runtime.logs import hardware
from flashdistill.runtime.loop import Cadence, checked_load, restore, run
from flashdistill.runtime.resume import TrainingDiverged, retune
from flashdistill.runtime.steps import ema_update, step_generator
from flashdistill.teacher.config import (
    RESUMABLE_KEYS,
    WHOLE_TABLES,
    TeacherConfig,
    TimestepSection,
    TrainSection,
    resume_fingerprint,
)
from flashdistill.teacher.repa import ReaderFeatures, RepaHead, repa_loss


@dataclass
class TrainState:
    model: FlowModel
    ema: FlowModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    repa_head: RepaHead | None = None  # REPA's projection head (trained, checkpointed, never exported)
    repa_target: ReaderFeatures | None = None  # the frozen reader trunk that gives REPA's targets

    def modules(self) -> dict[str, torch.nn.Module]:
        """What a checkpoint holds besides the optimizer and scheduler."""
        mods = {"model": self.model, "ema": self.ema}
        if self.repa_head is not None:
            mods["repa_head"] = self.repa_head
        return mods


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Linear warmup to 1 over `warmup` steps, then cosine from 1 to `min_ratio` at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_state(config: TeacherConfig) -> TrainState:
    """Model (seeded init, or the `run.init_from` teacher, optionally with a LoRA adapter on it: then only the
    adapter trains), its EMA copy, AdamW and the LR schedule."""
    torch.manual_seed(config.train.seed)
    model = FlowModel(config.model.mmdit())
    if config.run.init_from:
        if not (Path(config.run.init_from) / "flashdistill_model.json").is_file():
            raise UserError(f"run.init_from: {config.run.init_from} is not a teacher folder (train the base teacher "
                            f"first: flashdistill teacher train configs/teacher_base.yaml)")
        base = FlowModel.from_pretrained(config.run.init_from)
        if base.config != model.config:
            raise UserError(f"run.init_from: {config.run.init_from} is a {base.config}, the config asks for "
                            f"{model.config}")
        model.load_state_dict(base.state_dict())
    params = list(model.parameters())
    if config.lora.rank:
        lc = config.lora
        params = add_lora(model, lc.rank, lc.alpha, lc.targets, base=config.run.init_from)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    head = target = None
    if config.repa.weight > 0:
        mc = model.config
        target = ReaderFeatures(grid=mc.resolution // mc.patch_size)
        head = RepaHead(mc.num_attention_heads * mc.attention_head_dim, target.dim, config.repa.head_dim)
        params += list(head.parameters())
    tc = config.train
    optimizer = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.steps, tc.warmup_steps, tc.min_lr_ratio))
    return TrainState(model.train(), ema, optimizer, scheduler, head, target)


def checkpoint_files(state: TrainState) -> tuple[str, ...]:
    """The files a complete checkpoint of this run holds (its modules' weights, then the optimizer state)."""
    return (*(f"{name}.safetensors" for name in state.modules()), "state.safetensors", "state.json")


def prepare_inputs(batch: Batch, cache, train: TrainSection, timesteps: TimestepSection, gen: torch.Generator):
    """(x, eps, t, cond) for the flow-matching loss, with CFG dropout applied; all draws from `gen`."""
    b = batch.x.shape[0]
    drop_text = torch.rand(b, generator=gen) < train.text_dropout  # (B,)
    drop_source = (torch.rand(b, generator=gen) < train.source_dropout) & batch.has_source  # (B,)
    texts = ["" if d else text for text, d in zip(batch.texts, drop_text.tolist())]
    has_source = batch.has_source & ~drop_source
    source = batch.source * has_source[:, None, None, None]  # a dropped source is zeros, as on T2I rows
    emb, mask = cache.get(texts)  # (B, L, D), (B, L)
    t = sample_training_t(b, gen, timesteps.shift, timesteps.logit_mean, timesteps.logit_std)  # (B,)
    eps = torch.randn(batch.x.shape, generator=gen)  # (B, C, H, W)
    return batch.x, eps, t, Cond(emb, mask, source, has_source, list(batch.category))


def teacher_losses(state: TrainState, config: TeacherConfig, x, eps, t, cond: Cond) -> dict[str, torch.Tensor]:
    """{"loss": the total to minimise, "loss_fm": eq. 2, and with REPA "loss_repa"}: loss = fm + w·repa."""
    if state.repa_head is None:
        loss = flow_matching_loss(state.model, x, eps, t, cond, config.train.bf16)
        return {"loss": loss, "loss_fm": loss}
    z_t = interpolate(x, eps, t)
    with torch.autocast(z_t.device.type, dtype=torch.bfloat16, enabled=config.train.bf16):
        v, hidden = state.model(z_t, t, cond, hidden_layer=config.repa.layer)  # hidden (B, N, D)
    fm = torch.nn.functional.mse_loss(v.float(), velocity_target(x, eps))
    align = repa_loss(state.repa_head, hidden, state.repa_target(x))
    return {"loss": fm + config.repa.weight * align, "loss_fm": fm, "loss_repa": align}


def train_step(state: TrainState, config: TeacherConfig, cache, step: int) -> dict:
    """One optimizer step on batch `step`; returns its metrics. Raises TrainingDiverged on a non-finite loss or
    gradient norm, before the optimizer, the scheduler or the EMA have moved."""
    tc = config.train
    start = time.perf_counter()
    batch = make_batch(step, tc.batch_size, config.mix, tc.seed, "train", config.model.resolution)
    x, eps, t, cond = prepare_inputs(batch, cache, tc, config.timesteps, step_generator(tc.seed, step))
    losses = teacher_losses(state, config, x, eps, t, cond)
    loss = losses["loss"]
    lr = state.scheduler.get_last_lr()[0]
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"loss is {loss.item()} at step {step} (lr {lr:.3g}); lower train.lr or set "
                               f"train.grad_clip, then --resume")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
    params = [p for group in state.optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(grad_norm):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingDiverged(f"gradient norm is {float(grad_norm)} at step {step} (lr {lr:.3g}); lower train.lr "
                               f"or set train.grad_clip, then --resume")
    state.optimizer.step()
    state.scheduler.step()
    ema_update(state.ema, state.model, tc.ema_decay)
    return {"step": step + 1, **{k: v.item() for k, v in losses.items()}, "lr": lr, "grad_norm": float(grad_norm),
            "edit_rows": int(batch.has_source.sum()), "step_time": time.perf_counter() - start}


def open_cache(config: TeacherConfig, out: Path, encoder=None, spell_quoted: bool = False):
    """The run's text-embedding cache (models.text.open_text_cache with `run.text_cache`)."""
    return open_text_cache(config.run.text_cache, out, encoder, spell_quoted)


def export_teacher(ema: FlowModel, out: Path, info: dict) -> Path:
    """Write `<out>/teacher/` (EMA weights + teacher.json) atomically; returns its path."""
    final = out / "teacher"
    tmp = out / f".teacher-tmp-{uuid.uuid4().hex[:8]}"  # a kill leaves it: restore() removes it
    ema.save_pretrained(tmp)
    (tmp / "teacher.json").write_text(json.dumps(info, indent=1) + "\n")
    return swap_in(tmp, final)


def train_teacher(config: TeacherConfig, out: Path, resume: bool = False, encoder=None,
                  command: str | None = None, stop_after: int | None = None) -> dict:
    """Train (or continue) a teacher into `out`; returns a summary. `encoder` replaces MiniLM (tests share one).

    `stop_after` ends this call after that many total steps, with a checkpoint and no export, as a job that is
    time-sliced (or interrupted) would: the LR schedule still follows `train.steps`, so `--resume` continues it.
    """
    out = Path(out)
    # Another kind of run in `out`, or another process writing it, is refused; a start that fails before anything
    # is written (a bad init_from) leaves no folder behind.
    with claim_run(out, "teacher"):
        return _train(config, out, resume, encoder, command, stop_after)


class TeacherJob:
    """Teacher training as a job of the one training loop (flashdistill.runtime.loop)."""

    name, unit, bar_unit = "teacher", "step", "step"

    def __init__(self, state: TrainState, config: TeacherConfig, cache, out: Path):
        self.state, self.config, self.cache, self.out = state, config, cache, out
        self.checkpoint_files = checkpoint_files(state)

    def step(self, index: int) -> dict:
        return train_step(self.state, self.config, self.cache, index)

    def advice(self, metrics: dict) -> str:  # a teacher stops on its first bad step (train_step raises)
        return f"loss {metrics['loss']:.4g}). Lower train.lr or set train.grad_clip, then --resume"

    def postfix(self, metrics: dict, smoothed: float) -> dict:
        return {"loss": f"{smoothed:.4f}", "lr": f"{metrics['lr']:.2e}"}

    def evaluate(self, done: int, logger) -> bool:
        return False  # teachers are judged by the benches after training

    def objects(self) -> dict:
        return {"optimizer": self.state.optimizer, "scheduler": self.state.scheduler}

    def save(self, done: int, meta: dict) -> None:
        self.cache.flush()  # so a resumed run finds this run's embeddings on disk
        config = self.config
        meta = {"fingerprint": resume_fingerprint(config), "config": config.to_dict(), **meta}
        save_state(self.out, self.state.modules(), self.objects(), done, meta)

    def restore(self, resume: bool) -> tuple[int, dict]:
        """(first step, saved meta); changed resumable keys (train.lr, ...) are applied and reported."""
        config, state = self.config, self.state
        load = checked_load(config.to_dict(), resume_fingerprint(config), "config", RESUMABLE_KEYS, WHOLE_TABLES,
                            lambda folder: load_state(folder, state.modules(), self.objects()))
        start, meta = restore(self.out, self.checkpoint_files, resume, load, self.unit)
        if start or meta:
            retune(state.optimizer, config.train.lr, config.train.weight_decay, state.scheduler)
        return start, meta


def _train(config: TeacherConfig, out: Path, resume: bool, encoder, command: str | None,
           stop_after: int | None) -> dict:
    job = TeacherJob(build_state(config), config, None, out)
    start, saved_meta = job.restore(resume)
    steps = config.train.steps
    if start > steps:
        raise UserError(f"train.steps: {steps} is fewer than the {start} steps the checkpoint has done")
    job.cache = open_cache(config, out, encoder, config.model.spell_quoted)
    end = steps if stop_after is None else max(start, min(steps, stop_after))
    cadence = Cadence(config.run.log_every, config.run.checkpoint_every)
    ran = run(job, out, start, end, steps, saved_meta, cadence)
    final_loss = ran.metrics.get("loss", saved_meta.get("last_loss"))  # a resume with no step left ran none
    summary = {"steps": end, "resumed_from": start, "final_loss": final_loss, "wall_time_s": ran.wall_time_s,
               "teacher": None, "checkpoint": str(out / "checkpoint")}
    if end < steps or (start == steps and (out / "teacher").is_dir()):  # interrupted on purpose, or nothing to do
        return {**summary, "teacher": str(out / "teacher") if end == steps else None}
    info = {"format": 1, "config": config.to_dict(), "steps": steps, "wall_time_s": round(ran.wall_time_s, 1),
            "final_loss": final_loss, "hardware": hardware(), "command": command,
            "text_encoder": getattr(job.cache.encoder, "id", None), "sampling": {"shift": config.timesteps.shift},
            "weights": "EMA", "ema_decay": config.train.ema_decay}
    return {**summary, "teacher": str(export_teacher(job.state.ema, out, info))}
