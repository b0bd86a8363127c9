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

import copy
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path


from flashdistill.data.batches import TaskMix
from flashdistill.errors import UserError
from flashdistill.models.mmdit import MMDiTConfig
from flashdistill.runtime import resume
from flashdistill.runtime.config import apply_overrides, from_dict  # noqa: F401  (re-exported)
from flashdistill.world.render import check_resolution

PRESETS = {"tiny": MMDiTConfig.tiny, "small": MMDiTConfig.small}
# Keys a resumed run may change: bookkeeping, and the tuning knobs one lowers after a divergence (they change how
# the remaining steps move, not what the run is).
RESUMABLE_KEYS = ("train.steps", "run.checkpoint_every", "run.log_every", "run.text_cache", "train.lr",
                  "train.weight_decay", "train.grad_clip")
# Tables of weights a resume compares whole: a changed weight is reported as `mix.composition`, not per category.
WHOLE_TABLES = ("composition", "edit_mix")
check_resume = partial(resume.check_resume, whole=WHOLE_TABLES)  # the config's resume check (teacher/train.py)


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
            _require(getattr(self, name) is None or getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
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
        _require(self.steps >= 1, "train.steps", "must be >= 1")
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)")
        _require(0 <= self.text_dropout < 1, "train.text_dropout", "must be in [0, 1)")
        _require(0 <= self.source_dropout <= 1, "train.source_dropout", "must be in [0, 1]")
        _require(self.seed >= 0, "train.seed", "must be >= 0")


@dataclass
class TimestepSection:
    """t = shift_time(sigmoid(N(logit_mean, logit_std²)), shift): logit-normal training times (SD3)."""

    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def check(self) -> None:
        _require(self.shift > 0, "timesteps.shift", "must be > 0")
        _require(self.logit_std > 0, "timesteps.logit_std", "must be > 0")


@dataclass
class RunSection:
    checkpoint_every: int = 100
    log_every: int = 10
    init_from: str | None = None  # a teacher folder (FlowModel.save_pretrained) to start from
    text_cache: str | None = None  # embedding cache folder; default: <out>/../text-cache, shared by runs

    def check(self) -> None:
        _require(self.checkpoint_every >= 1, "run.checkpoint_every", "must be >= 1")
        _require(self.log_every >= 1, "run.log_every", "must be >= 1")


@dataclass
class LoraSection:
    """Fine-tune `run.init_from` as a LoRA adapter (peft) instead of all weights; rank 0 = full fine-tune."""

    rank: int = 0
    alpha: float | None = None  # default: rank (scale 1)
    targets: list[str] | None = None  # module name suffixes; default models.lora.DEFAULT_TARGETS

    def check(self) -> None:
        _require(self.rank >= 0, "lora.rank", "must be >= 0 (0 = no LoRA)")
        _require(self.alpha is None or self.alpha > 0, "lora.alpha", "must be > 0")
        _require(self.targets is None or len(self.targets) > 0, "lora.targets", "must name at least one layer")


@dataclass
class RepaSection:
    """REPA (Yu et al., 2025): align the hidden states after block `layer` with the reader network's features of the
    clean image through a small MLP head (`teacher/repa.py`); `weight` 0 switches it off. Training only: the head is
    not part of the exported teacher."""

    weight: float = 0.0
    layer: int = 2  # 1-based transformer block whose output is aligned
    head_dim: int = 384  # hidden width of the projection MLP

    def check(self) -> None:
        _require(self.weight >= 0, "repa.weight", "must be >= 0 (0 = off)")
        _require(self.layer >= 1, "repa.layer", "must be >= 1")
        _require(self.head_dim >= 1, "repa.head_dim", "must be >= 1")


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
        _require(not self.repa.weight or self.repa.layer <= self.model.mmdit().num_layers, "repa.layer",
                 f"must be at most the model's {self.model.mmdit().num_layers} blocks")
        _require(not self.lora.rank or bool(self.run.init_from), "lora.rank",
                 "a LoRA fine-tune needs run.init_from (the base teacher it adapts)")
        self.mix.validate("mix")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def _require(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise UserError(f"{key}: {why}")


def config_from_raw(raw: dict | None, overrides: list[str] | None = None) -> TeacherConfig:
    raw = apply_overrides(copy.deepcopy(raw or {}), list(overrides or []))
    return from_dict(TeacherConfig, raw).check()


def load_config(path: str | Path, overrides: list[str] | None = None) -> TeacherConfig:
    """Read a YAML teacher config, apply dotted overrides, validate. Bad input -> UserError."""
    from flashdistill.files import read_yaml

    path = Path(path)
    raw = read_yaml(path, "config")  # missing, not UTF-8, invalid YAML, a duplicate key: one line naming the file
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"config {path}: the top level must be a mapping")
    return config_from_raw(raw, overrides)


def resume_fingerprint(config: TeacherConfig) -> dict:
    """The config minus RESUMABLE_KEYS: a resume is refused when this differs from the checkpoint's."""
    data = config.to_dict()
    for key in RESUMABLE_KEYS:
        group, name = key.split(".")
        data[group].pop(name)
    if not data["lora"]["rank"]:  # full fine-tune: absent from checkpoints made before the key
        data.pop("lora")
    if not data["repa"]["weight"]:  # off: absent from checkpoints made before the key
        data.pop("repa")
    for key in ("patch_size", "spell_quoted"):  # defaults: absent from checkpoints made before the keys
        if data["model"][key] in (None, False):
            data["model"].pop(key)
    if not data["mix"].get("t2i_pool"):  # the default (full pools): absent from checkpoints made before the key
        data["mix"].pop("t2i_pool", None)
    return data
