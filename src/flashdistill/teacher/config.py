"""`TeacherConfig`: what a teacher training run is, loaded from YAML with strict validation and dotted overrides.

Layout (every group optional in YAML; a missing key takes the default below):

    model:     preset (tiny | small), resolution, optional explicit dims (and patch_size) that override the preset,
               spell_quoted
    train:     steps, batch_size, lr, min_lr_ratio, warmup_steps, weight_decay, grad_clip, ema_decay,
               text_dropout, source_dropout, bf16, seed
    timesteps: shift, logit_mean, logit_std      (flow-matching training times, see flashdistill.flow)
    mix:       t2i_weight, edit_weight, composition {category: w}, edit_mix {edit_category: w}
    run:       checkpoint_every, log_every, init_from, text_cache
    repa:      weight (0 = off), layer, head_dim   (representation alignment to the reader, teacher/repa.py)
    lora:      rank (0 = full fine-tune), alpha, targets   (a LoRA fine-tune of run.init_from, models/lora.py)

Strictness: an unknown key, a wrong type or an impossible value raises UserError naming the dotted key
(`train.lr: must be > 0, got -0.1`). Overrides are `key.sub=value` strings whose value is parsed by the loader
that reads the file (flashdistill.parsing), so `train.lr=1e-4`, `train.bf16=true` and `mix.composition.text=3` all
work, and are validated exactly like the file. Load one with `load_config(path, overrides)`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from flashdistill.data.batches import TaskMix
from flashdistill.errors import UserError
from flashdistill.models.mmdit import MMDiTConfig
from flashdistill.runtime import config as loader
from flashdistill.runtime.config import from_dict, require
from flashdistill.world.render import check_resolution

PRESETS = {"tiny": MMDiTConfig.tiny, "small": MMDiTConfig.small}
# Keys a resumed run may change: bookkeeping, and the tuning knobs one lowers after a divergence (they change how
# the remaining steps move, not what the run is).
RESUMABLE_KEYS = ("train.steps", "run.checkpoint_every", "run.log_every", "run.text_cache", "train.lr",
                  "train.weight_decay", "train.grad_clip")
# Tables of weights a resume compares whole: a changed weight is reported as `mix.composition`, not per category.
WHOLE_TABLES = ("composition", "edit_mix")


@dataclass
class ModelSection:
    preset: str = "small"
    resolution: int = 32
    num_layers: int | None = None  # explicit dims replace the preset's value when given
    num_attention_heads: int | None = None
    attention_head_dim: int | None = None
    axes_dims_rope: list[int] | None = None
    patch_size: int | None = None  # pixels per token side: 2 (256 tokens at 32 px) or 4 (64 tokens, ~4x cheaper)
    spell_quoted: bool = False  # quoted words also reach the model letter by letter (models.text)

    def check(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(f"model.preset: must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        try:
            check_resolution(self.resolution)
        except UserError as err:
            raise UserError(f"model.resolution: {err}") from None
        for name in ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size"):
            require(getattr(self, name) is None or getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        try:
            self.mmdit()
        except UserError as err:
            raise UserError(f"model: {err}") from None

    def mmdit(self) -> MMDiTConfig:
        base = PRESETS[self.preset]()
        dims = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("preset", "resolution")}
        dims = {k: (tuple(v) if k == "axes_dims_rope" else v) for k, v in dims.items() if v is not None}
        return replace(base, resolution=self.resolution, **dims)


@dataclass
class TrainSection:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr·min_lr_ratio at the last step
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping (the norm is still logged)
    ema_decay: float = 0.995
    text_dropout: float = 0.1  # P(prompt -> ""): trains the unconditional branch of classifier-free guidance
    source_dropout: float = 0.05  # P(edit source dropped): the row trains as T2I on the target with the instruction
    bf16: bool = False  # bf16 autocast; measured slower than float32 on the 2-core CPU, so off by default
    seed: int = 0

    def check(self) -> None:
        require(self.steps >= 1, "train.steps", "must be >= 1")
        require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        require(self.lr > 0, "train.lr", "must be > 0")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")
        require(0 <= self.text_dropout < 1, "train.text_dropout", "must be in [0, 1)")
        require(0 <= self.source_dropout <= 1, "train.source_dropout", "must be in [0, 1]")
        require(self.seed >= 0, "train.seed", "must be >= 0")


@dataclass
class TimestepSection:
    """t = shift_time(sigmoid(N(logit_mean, logit_std²)), shift): logit-normal training times (SD3)."""

    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def check(self) -> None:
        require(self.shift > 0, "timesteps.shift", "must be > 0")
        require(self.logit_std > 0, "timesteps.logit_std", "must be > 0")


@dataclass
class RunSection:
    checkpoint_every: int = 100
    log_every: int = 10
    init_from: str | None = None  # a teacher folder (FlowModel.save_pretrained) to start from
    text_cache: str | None = None  # embedding cache folder; default: <out>/../text-cache, shared by runs

    def check(self) -> None:
        require(self.checkpoint_every >= 1, "run.checkpoint_every", "must be >= 1")
        require(self.log_every >= 1, "run.log_every", "must be >= 1")


@dataclass
class LoraSection:
    """Fine-tune `run.init_from` as a LoRA adapter (peft) instead of all weights; rank 0 = full fine-tune."""

    rank: int = 0
    alpha: float | None = None  # default: rank (scale 1)
    targets: list[str] | None = None  # module name suffixes; default models.lora.DEFAULT_TARGETS

    def check(self) -> None:
        require(self.rank >= 0, "lora.rank", "must be >= 0 (0 = no LoRA)")
        require(self.alpha is None or self.alpha > 0, "lora.alpha", "must be > 0")
        require(self.targets is None or len(self.targets) > 0, "lora.targets", "must name at least one layer")


@dataclass
class RepaSection:
    """REPA (Yu et al., 2025): align the hidden states after block `layer` with the reader network's features of the
    clean image through a small MLP head (`teacher/repa.py`); `weight` 0 switches it off. Training only: the head is
    not part of the exported teacher."""

    weight: float = 0.0
    layer: int = 2  # 1-based transformer block whose output is aligned
    head_dim: int = 384  # hidden width of the projection MLP

    def check(self) -> None:
        require(self.weight >= 0, "repa.weight", "must be >= 0 (0 = off)")
        require(self.layer >= 1, "repa.layer", "must be >= 1")
        require(self.head_dim >= 1, "repa.head_dim", "must be >= 1")


@dataclass
class TeacherConfig:
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    timesteps: TimestepSection = field(default_factory=TimestepSection)
    mix: TaskMix = field(default_factory=TaskMix)
    run: RunSection = field(default_factory=RunSection)
    lora: LoraSection = field(default_factory=LoraSection)
    repa: RepaSection = field(default_factory=RepaSection)

    def check(self) -> TeacherConfig:
        for section in (self.model, self.train, self.timesteps, self.run, self.lora, self.repa):
            section.check()
        require(not self.repa.weight or self.repa.layer <= self.model.mmdit().num_layers, "repa.layer",
                 f"must be at most the model's {self.model.mmdit().num_layers} blocks")
        require(not self.lora.rank or bool(self.run.init_from), "lora.rank",
                 "a LoRA fine-tune needs run.init_from (the base teacher it adapts)")
        self.mix.validate("mix")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def config_from_raw(raw: dict | None, overrides: list[str] | None = None) -> TeacherConfig:
    return from_dict(TeacherConfig, loader.with_overrides(raw, overrides)).check()


def load_config(path: str | Path, overrides: list[str] | None = None) -> TeacherConfig:
    """Read a YAML teacher config, apply dotted overrides, validate. Bad input -> UserError."""
    return config_from_raw(loader.read_config_file(path, "config"), overrides)


# Keys added after checkpoints existed, left out of the fingerprint at their defaults so those checkpoints resume:
# lora (off = a full fine-tune), repa (off), model.patch_size / model.spell_quoted, mix.t2i_pool (the full pools).
LEGACY_DEFAULTS = (("lora", lambda g: not g["rank"]), ("repa", lambda g: not g["weight"]),
                   ("model.patch_size", lambda v: v in (None, False)),
                   ("model.spell_quoted", lambda v: v in (None, False)), ("mix.t2i_pool", lambda v: not v))


def resume_fingerprint(config: TeacherConfig) -> dict:
    """The config minus RESUMABLE_KEYS: a resume is refused when this differs from the checkpoint's."""
    return loader.resume_fingerprint(config, RESUMABLE_KEYS, LEGACY_DEFAULTS)
