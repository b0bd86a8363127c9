"""The predicted peak GPU memory of one DMD iteration per rank, and whether it fits a GPU (`flashdistill plan`).

    peak = resident states + gradients + critic snapshot (if on the GPU) + activations of the largest grad pass

- Resident states: the role rows of layouts/plan.py (frozen weights in `roles.frozen_dtype`; trainable weights, their
  AdamW moments and the EMA in the trainable dtype), sharded / world size.
- Gradients: of the student and of the critic, both alive while the critic updates (the generator's step waits
  until every critic update was finite: distill/trainer.py).
- Critic snapshot: the critic's trainable weights and AdamW moments copied before its updates (runtime/guard.py);
  in pinned host memory on a GPU since issue 23, so 0 here unless `snapshot_on_gpu`.
- FSDP2 (`run.parallel: fsdp`, one rank included): plus the all-gathered blocks in flight; with `run.fsdp_offload`
  the sharded states and their gradients are in host memory (`Peak.host`), the GPU holds gathered blocks and
  activations only.
- Activations: one grad pass of a micro-batch (`run.micro_batch` rows per rank) holds, per token, what
  plan.activation_bytes counts (with per-block checkpointing: every block's input plus one recomputed block), times
  a factor KAPPA fitted on measured H200 peaks (`H200`): the formula leaves out the backward's transients and the
  teachers' guided forward that runs while the student's graph is held. The worst micro-batch is all edit rows
  when the task ratio has edits (target + source latents + VL tokens), else all T2I rows.

Calibration (KAPPA, least squares through the origin over the activation part of six measured H200 peaks: the three
runs of `../shared/reference/gpu-fullsize-h200.md` in the layout main then had, and three of
`benchmarks/gpu_fullsize.py` in today's): `calibration()` returns each run's measured and predicted peak;
`pytest tests/test_plan.py -k kappa`. Without checkpointing the formula is not calibrated: it read 9-12 % low
against the two measured no-checkpointing peaks (benchmarks/results/gpu_fullsize_h200_before_bf16_lora.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from flashdistill.distill.layouts.plan import GIB, SHIPPED, Counts, activation_bytes, count, meta_transformer, role_rows

# Measured peak allocated GiB of `train_iteration` on one H200 (20.43B transformer, rank-64 LoRA roles, 1024²,
# per-block checkpointing, bf16 frozen base; 120 prompt, 300 VL and 4096 source tokens per row): (layout, rows of the
# largest grad pass as (edit rows, T2I rows), peak allocated GiB). Layout "old": bf16 adapters and the critic's
# snapshot on the GPU, as main (098eb31) had them (../shared/reference/gpu-fullsize-h200.md); "new": fp32 adapters,
# snapshot in host memory (benchmarks/results/gpu_fullsize_h200*.json: batch 1, and batch 8 at micro-batch 2 / 4).
H200 = (("old", (1, 0), 52.57), ("old", (3, 1), 64.06), ("old", (7, 1), 83.86),
        ("new", (1, 0), 56.78), ("new", (2, 0), 63.71), ("new", (4, 0), 75.04))
H200_TOKENS = {"text": 120, "vl": 300, "source": 4096}
KAPPA = 1.295  # set from fit_kappa(qwen_counts()) and held to it by tests/test_plan.py


@dataclass
class Workload:
    """What the activations of one grad pass depend on."""

    micro_batch: int  # rows per forward/backward on a rank
    resolution: int | tuple[int, int] = 1024  # target side, or (height, width), in pixels
    edits: bool = True  # the task ratio has edit rows (the worst micro-batch is all edits)
    text_tokens: int = 256  # T2I prompt tokens per row
    vl_tokens: int = 512  # edit rows: Qwen2.5-VL tokens of source + instruction
    source_tokens: int | None = None  # edit rows: packed source latents (default: as many as the target's)
    checkpointing: bool = True
    vae_factor: int = 8
    patch: int = 2

    def sides(self) -> tuple[int, int]:
        return self.resolution if isinstance(self.resolution, tuple) else (self.resolution, self.resolution)

    def image_tokens(self) -> int:
        h, w = self.sides()
        return (h // (self.vae_factor * self.patch)) * (w // (self.vae_factor * self.patch))

    def row_tokens(self, edit: bool) -> int:
        image = self.image_tokens()
        if not edit:
            return image + self.text_tokens
        return image + (image if self.source_tokens is None else self.source_tokens) + self.vl_tokens

    def pass_tokens(self) -> int:
        """Tokens of the largest grad pass: a micro-batch of edit rows if there are edits, else of T2I rows."""
        return self.micro_batch * max(self.row_tokens(False), self.row_tokens(True) if self.edits else 0)


def raw_activation_bytes_per_token(c: Counts, checkpointing: bool) -> float:
    """plan.activation_bytes per token: 2 B x (L x D (block inputs) + C_ACT x D (one block)) with checkpointing."""
    return activation_bytes(c, 1, 1, checkpointing)


@dataclass
class Peak:
    states: float  # bytes per rank on the GPU: weights, AdamW moments, EMA
    grads: float
    snapshot: float
    activations: float
    gather: float  # FSDP's all-gathered blocks (sharded roles: world > 1, or run.parallel fsdp on one rank)
    host: float = 0.0  # run.fsdp_offload: the states and gradients held in host memory instead

    @property
    def total(self) -> float:
        return self.states + self.grads + self.snapshot + self.activations + self.gather


def predict(c: Counts, mode: str, teachers: int, work: Workload, world: int = 1, frozen_bytes: int = 2,
            trainable_bytes: int = 4, snapshot_on_gpu: bool = False, kappa: float | None = None,
            sharded: bool | None = None, offload: bool = False) -> Peak:
    """The peak per rank of one DMD iteration (see the module docstring). `sharded` (default: world > 1) adds FSDP's
    gathered blocks; `offload` (run.fsdp_offload, FSDP2's CPUOffloadPolicy) moves the sharded states and their
    gradients to the host: the GPU holds the gathered blocks in flight and the activations."""
    rows = role_rows(c, mode, world, teachers, frozen_bytes, trainable_bytes)
    gather = sum(r.weights for r in rows if r.role.startswith("FSDP")) if (sharded or world > 1 or offload) else 0.0
    states = sum(r.weights + r.optimizer for r in rows if not r.role.startswith("FSDP"))
    grads = sum(r.grads for r in rows)
    critic = next(r for r in rows if r.role.startswith("critic"))
    snapshot = (critic.weights + critic.optimizer) if snapshot_on_gpu else 0.0
    per_token = raw_activation_bytes_per_token(c, work.checkpointing) * (KAPPA if kappa is None else kappa)
    host = states + grads if offload else 0.0
    if offload:
        states = grads = 0.0
    return Peak(states, grads, snapshot, per_token * work.pass_tokens(), gather, host)


def _reference_tokens(edit_rows: int, t2i_rows: int) -> int:
    """Tokens of an H200 run's largest grad pass."""
    work = Workload(micro_batch=1, text_tokens=H200_TOKENS["text"], vl_tokens=H200_TOKENS["vl"],
                    source_tokens=H200_TOKENS["source"])
    return edit_rows * work.row_tokens(True) + t2i_rows * work.row_tokens(False)


def _reference_fixed(c: Counts, layout: str) -> float:
    """Bytes of an H200 run without activations: states, gradients and, in the old layout, the snapshot."""
    old = layout == "old"
    p = predict(c, "lora", 2, Workload(micro_batch=0), frozen_bytes=2, trainable_bytes=2 if old else 4,
                snapshot_on_gpu=old, kappa=0.0)
    return p.total


def fit_kappa(c: Counts) -> float:
    """Least squares through the origin: measured activation bytes against the formula's, over `H200`."""
    per_token = raw_activation_bytes_per_token(c, True)
    xs = [per_token * _reference_tokens(*rows) for _, rows, _ in H200]
    ys = [measured * GIB - _reference_fixed(c, layout) for layout, _, measured in H200]
    return sum(x * y for x, y in zip(xs, ys)) / sum(x * x for x in xs)


def calibration(c: Counts) -> list[dict]:
    """Each H200 run: layout, rows, measured and predicted peak allocated (GiB) with the fitted KAPPA."""
    per_token = raw_activation_bytes_per_token(c, True)
    out = []
    for layout, (edit_rows, t2i_rows), measured in H200:
        tokens = _reference_tokens(edit_rows, t2i_rows)
        predicted = (_reference_fixed(c, layout) + KAPPA * per_token * tokens) / GIB
        out.append({"layout": layout, "edit_rows": edit_rows, "t2i_rows": t2i_rows, "tokens": tokens,
                    "measured_gib": measured, "predicted_gib": round(predicted, 2),
                    "error_gib": round(predicted - measured, 2)})
    return out


def qwen_counts(rank: int = 64) -> Counts:
    """Counts of the shipped 20.43B Qwen-Image transformer (meta device, about a second)."""
    return count(meta_transformer(SHIPPED["qwen-image"]), rank=rank)


@dataclass
class PlanSettings:
    """What `flashdistill plan` predicts the peak for: from a recipe, overridden by the command's flags."""

    mode: str = "lora"  # plan.MODES
    teachers: int = 2
    world: int = 1
    frozen_bytes: int = 2
    work: Workload = None  # type: ignore[assignment]
    batch_size: int | None = None  # the recipe's global batch (None: not from a recipe)
    sharded: bool = False  # run.parallel fsdp (FSDP2 on any number of ranks: gathered blocks)
    offload: bool = False  # run.fsdp_offload: states and gradients in host memory


def settings_from_recipe(recipe, world: int) -> PlanSettings:
    """The planner's settings of a loaded Recipe on `world` ranks (roles.frozen_dtype auto plans as bf16: a GPU)."""
    mode = "full" if recipe.roles.mode == "full" else "lora" if recipe.critic.lora else "lora, critic.lora false"
    t2i, edit = recipe.tasks.weights()
    per_rank = max(1, recipe.dmd.batch_size // world)
    micro = min(recipe.run.micro_batch or per_rank, per_rank)
    h, w = recipe.data.size()
    work = Workload(micro_batch=micro, resolution=h if h == w else (h, w), edits=edit > 0,
                    checkpointing=recipe.roles.gradient_checkpointing)
    return PlanSettings(mode, len(set(recipe.teachers.values())), world,
                        4 if recipe.roles.frozen_dtype == "fp32" else 2, work, recipe.dmd.batch_size,
                        recipe.run.parallel == "fsdp", recipe.run.fsdp_offload)


def render(c: Counts, s: PlanSettings, gpu_memory: float | None = None) -> str:
    """The predicted peak as Markdown: the chosen micro-batch, and 1, 2, 4, 8 rows beside it."""
    from dataclasses import replace

    w = s.work
    head = (f"## Peak per GPU, roles.mode {s.mode} (predicted)\n\n"
            f"{'{}x{}'.format(*w.resolution) if isinstance(w.resolution, tuple) else f'{w.resolution}²'} targets, "
            f"{'edit rows (the worst micro-batch: all edits)' if w.edits else 'T2I only'}, "
            f"{w.text_tokens} prompt / {w.vl_tokens} VL tokens, per-block checkpointing "
            f"{'on' if w.checkpointing else 'off'}, world size {s.world}. Activations = {KAPPA} (fitted on H200 "
            f"runs) x the formula of distill/layouts/plan.py; gradients of student and critic in fp32; the critic's "
            f"snapshot is in host memory. Reserved memory ran 4-7 % above allocated in the H200 runs (expandable "
            f"segments), so a run fits when the peak allocated is at most 90 % of the GPU.\n\n"
            "| micro-batch | tokens per grad pass | states | grads | activations | peak allocated (GiB) |"
            + (f" fits {gpu_memory:g} GiB |" if gpu_memory else "") + "\n|---:|---:|---:|---:|---:|---:|"
            + ("---|" if gpu_memory else "") + "\n")
    lines = []
    for m in sorted({1, 2, 4, 8, w.micro_batch}):
        work = replace(w, micro_batch=m)
        p = predict(c, s.mode, s.teachers, work, s.world, s.frozen_bytes, sharded=s.sharded, offload=s.offload)
        mark = " (this recipe)" if m == w.micro_batch and s.batch_size else ""
        fits = "" if not gpu_memory else f" {'yes' if p.total / GIB <= 0.9 * gpu_memory else 'no'} |"
        lines.append(f"| {m}{mark} | {work.pass_tokens():,} | {p.states / GIB:,.2f} | {p.grads / GIB:,.2f} | "
                     f"{p.activations / GIB:,.2f} | **{p.total / GIB:,.2f}** |{fits}")
    note = ""
    if s.offload:
        host = predict(c, s.mode, s.teachers, w, s.world, s.frozen_bytes, sharded=True, offload=True).host
        note += (f"\nrun.fsdp_offload: the sharded states and gradients live in host memory ({host / GIB:,.2f} GiB "
                 f"per rank, pinned), so the GPU holds the gathered blocks in flight and the activations; every "
                 f"block's weights cross PCIe in each pass, and AdamW steps on the CPU.\n")
    if s.batch_size:
        note = (f"\nThe global batch ({s.batch_size}) is a sum of micro-batches: `run.micro_batch` sets the rows of "
                f"one forward/backward on a rank without changing the result.\n")
    return head + "\n".join(lines) + "\n" + note
