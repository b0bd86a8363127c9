"""`Recipe`: what a distillation run is, loaded from YAML with strict validation and dotted overrides.

Layout (every group but `teachers` optional; a missing key takes the default below):

    teachers:  {name: folder | teacher:NAME}   frozen; teacher:NAME -> src/flashdistill/assets/teachers/NAME
    student:   init_from (a teacher name), nfe, shift, timesteps (explicit list; default: the nfe-step shifted grid)
    critic:    init_from (a teacher name, the base teacher), lr, updates (critic updates per generator step)
    dmd:       cfg_scale, t_min/t_max/t_shift (DMD noise levels), normalize, lr, weight_decay, grad_clip,
               batch_size (global; the rows per pass are run.micro_batch), iterations,
               ema_decay, bf16, seed, first_step_fm (paper §6.1; 0 = off), regression (DMD's regression
               term onto the teachers' ODE output; 0 = off) and regression_nfe (that ODE's Euler steps),
               max_bad_steps (consecutive non-finite steps tolerated)
    guidance:  λ_{k,m}(c) (paper eq. 5-6), see `flashdistill.distill.guidance`
    data:      composition {category: weight} or counts {category: number of prompts} (paper §3, E1-E5);
               prompts / edits: the user's JSONL files (flashdistill.data.files), encoded by `flashdistill cache`;
               with them the categories are the files' (composition, edit_mix and guidance name those) and
               resolution is the target side, or [height, width], in pixels (qwen-image)
    tasks:     ratio "T2I:Edit" (paper §5; "5:5"), edit_mix {edit category: weight}
    eval:      every (iterations between quick evaluations, 0 = off), limit (bench cases per category), patience;
               with data files: prompts / edits (eval files), judge (vlm | none), vlm_base_url, vlm_model,
               vlm_api_key_env, vlm_concurrency (bench/file_eval.py)
    run:       checkpoint_every, log_every, text_cache, device (auto | cpu | cuda), threads (CPU threads; 0 = default),
               micro_batch (rows per forward/backward on a rank, gradient accumulation; 0 = the rank's whole share;
               `dmd.micro_batch`, its old place, is still read),
               parallel (ddp | fsdp: how torchrun ranks hold the roles),
               fsdp_offload (fsdp: parameter shards on the host),
               compile (none | blocks: torch.compile of every transformer block, `flashdistill.models.compiled`)
    gan:       generator_weight, critic_weight, layers, lr, t_min/t_max/t_shift (its own noise levels), warmup:
               DMD2's GAN term on the critic's features (0 = off; the embedded world only, `flashdistill.distill.gan`)
    pairs:     folder (a pairs cache of `flashdistill pairs`), weight, final_weight, batch_size, distance (mse |
               critic): regression onto the teachers' own many-step images from the same noise (`distill/pairs.py`)
    roles:     mode (full | lora: one frozen base, student/critic adapters; critic.lora false = full critic),
               lora_rank, lora_alpha, gradient_checkpointing, frozen_dtype (auto | bf16 | fp32: what is frozen;
               what trains is fp32)

Strictness as in `flashdistill.teacher.config` (both load through `flashdistill.runtime.config`): an unknown key,
a wrong type or an impossible value raises UserError naming the dotted key. `tasks.ratio=7:3` on the command line
stays the string "7:3" (plain YAML 1.1 would read it as the base-60 integer 423).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

from flashdistill.data.batches import FileMix, TaskMix
from flashdistill.distill.gan import GanSection
from flashdistill.distill.guidance import Guidance, parse_guidance
from flashdistill.distill.pairs import PairsSection
from flashdistill.distill.recipe_data import DataSection, TasksSection
from flashdistill.distill.recipe_eval import EvalSection
from flashdistill.distill.recipe_run import RunSection
from flashdistill.errors import UserError
from flashdistill.flow import euler_timesteps
from flashdistill.models.lora import DEFAULT_TARGETS
from flashdistill.runtime import config as loader
from flashdistill.runtime.config import from_dict, require

# Keys a resumed run may change: bookkeeping, and the tuning knobs one lowers after a divergence (they change how
# the remaining iterations move, not what the run is); `--resume` says which of them changed. `dmd.micro_batch` is
# run.micro_batch's old place: checkpoints written before the move hold it.
RESUMABLE_KEYS = ("dmd.iterations", "run.micro_batch", "dmd.micro_batch", "dmd.max_bad_steps", "run.checkpoint_every",
                  "run.log_every", "run.text_cache", "run.device", "run.threads", "run.fsdp_offload", "run.compile",
                  "eval.every", "eval.limit",
                  "eval.patience", "eval.prompts", "eval.edits", "eval.judge", "eval.vlm_base_url", "eval.vlm_model",
                  "eval.vlm_api_key_env", "eval.vlm_concurrency", "pairs.folder", "dmd.lr", "critic.lr",
                  "dmd.weight_decay", "critic.weight_decay", "dmd.grad_clip")
# Tables of weights a resume compares whole: a changed weight is reported as `data.composition`, not per category.
WHOLE_TABLES = ("composition", "edit_mix")
FROZEN_DTYPES = ("auto", "bf16", "fp32")
# Upper bounds that keep a typo from allocating without end. One iteration draws nfe + 1 + critic.updates
# latent-sized noises per row of the global batch on every rank (7 MiB a row for a 1024² Qwen-Image latent, 4 steps,
# 2 critic updates): 4096 rows are 28 GiB of draws, far past the shipped recipes' 8.
MAX_BATCH = 4096
MAX_LORA_RANK = 4096  # above the width of any Qwen-Image transformer (3072): a rank past it is a full matrix


@dataclass
class StudentSection:
    init_from: str = "base"
    nfe: int = 4
    shift: float = 1.0
    timesteps: list[float] | None = None  # explicit student times, first = 1.0; default: euler grid minus t=0

    def resolved_timesteps(self) -> list[float]:
        if self.timesteps is not None:
            return [float(t) for t in self.timesteps]
        return [round(float(t), 6) for t in euler_timesteps(self.nfe, self.shift)[:-1]]

    def check(self) -> None:
        require(self.nfe >= 1, "student.nfe", "must be >= 1")
        require(self.shift > 0, "student.shift", "must be > 0")
        if self.timesteps is None:
            return
        ts = self.timesteps
        require(len(ts) == self.nfe, "student.timesteps", f"has {len(ts)} entries, student.nfe is {self.nfe}")
        require(ts[0] == 1.0, "student.timesteps", f"must start at 1.0 (pure noise), got {ts[0]}")
        require(all(0 < b < a for a, b in zip(ts, ts[1:])), "student.timesteps",
                 f"must decrease strictly and stay > 0, got {ts}")


@dataclass
class RolesSection:
    """Memory layout of the roles: `full` (separate copies) or `lora` (one frozen base, adapters;
    distill/layouts/lora.py)."""

    mode: str = "full"
    lora_rank: int = 64
    lora_alpha: float | None = None  # default: the rank (scale 1)
    # Module-name suffixes the adapters wrap, as peft matches them; default: models/lora.py DEFAULT_TARGETS
    # (attention and MLP projections). Add e.g. img_mod.1, txt_mod.1 (each block's timestep modulation).
    lora_targets: list[str] | None = None
    gradient_checkpointing: bool = False  # per transformer block, in the grad passes
    # What is frozen (base, teachers, teacher adapters): bf16 | fp32 | auto (bf16 on CUDA, fp32 on a CPU). What
    # trains (adapters or a full critic), its gradients, AdamW moments and the EMA are fp32 whatever this says.
    frozen_dtype: str = "auto"

    def check(self) -> None:
        require(self.mode in ("full", "lora"), "roles.mode", f"must be full or lora, got {self.mode!r}")
        require(self.frozen_dtype in FROZEN_DTYPES, "roles.frozen_dtype", f"must be one of "
                 f"{', '.join(FROZEN_DTYPES)}, got {self.frozen_dtype!r}")
        require(1 <= self.lora_rank <= MAX_LORA_RANK, "roles.lora_rank", f"must be in [1, {MAX_LORA_RANK}], got "
                 f"{self.lora_rank}")
        require(self.lora_alpha is None or self.lora_alpha > 0, "roles.lora_alpha", "must be > 0")
        targets = self.lora_targets
        require(targets is None or (isinstance(targets, list) and targets
                                    and all(isinstance(t, str) and t.strip() for t in targets)),
                "roles.lora_targets", f"must be a non-empty list of module names, got {targets!r}")
        require(targets is None or len(set(targets)) == len(targets), "roles.lora_targets",
                f"names a module twice: {targets}")

    def targets(self) -> list[str]:
        """The module-name suffixes the adapters wrap."""
        return list(self.lora_targets or DEFAULT_TARGETS)


@dataclass
class CriticSection:
    init_from: str = "base"
    lr: float = 1e-4
    updates: int = 2  # critic updates per generator update (DMD2's two-timescale rule)
    weight_decay: float = 0.0
    lora: bool = True  # with roles.mode lora: the critic is an adapter (true) or a full-parameter copy (false)

    def check(self) -> None:
        require(self.lr > 0, "critic.lr", "must be > 0")
        require(self.updates >= 1, "critic.updates", "must be >= 1")
        require(self.weight_decay >= 0, "critic.weight_decay", "must be >= 0")


@dataclass
class DMDSection:
    cfg_scale: float = 4.0  # classifier-free guidance of the real score (teachers); the critic runs unguided
    t_min: float = 0.02  # DMD perturbation x_t = (1-t)·x_θ + t·ξ, t = shift(U[t_min, t_max], t_shift)
    t_max: float = 0.98
    t_shift: float = 1.0
    normalize: bool = True  # divide the DMD gradient by mean|x_θ - x0_real| per sample (DMD)
    lr: float = 2e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping (the norm is still logged)
    batch_size: int = 8  # global: split over ranks under torchrun (rows per pass: run.micro_batch)
    iterations: int = 1000
    ema_decay: float = 0.99
    bf16: bool = False
    seed: int = 0
    first_step_fm: float = 0.0  # weight of first-step flow-matching supervision (paper §6.1); 0 = off
    regression: float = 0.0  # weight of DMD's regression onto the guided teachers' ODE from z_k (dmd.py); 0 = off
    regression_nfe: int = 8  # Euler steps of that ODE (each costs every weighted teacher's guided pass)
    max_bad_steps: int = 5  # stop after this many non-finite iterations in a row

    def check(self) -> None:
        require(self.cfg_scale >= 1, "dmd.cfg_scale", "must be >= 1 (1 = no guidance)")
        require(0 < self.t_min < self.t_max <= 1, "dmd.t_min, dmd.t_max", "need 0 < t_min < t_max <= 1")
        require(self.t_shift > 0, "dmd.t_shift", "must be > 0")
        for name in ("lr",):
            require(getattr(self, name) > 0, f"dmd.{name}", "must be > 0")
        require(self.weight_decay >= 0, "dmd.weight_decay", "must be >= 0")
        require(self.grad_clip >= 0, "dmd.grad_clip", "must be >= 0 (0 disables clipping)")
        require(1 <= self.batch_size <= MAX_BATCH, "dmd.batch_size", f"must be in [1, {MAX_BATCH}] (the global "
                 f"batch of one iteration), got {self.batch_size}")
        require(self.iterations >= 1, "dmd.iterations", "must be >= 1")
        require(0 <= self.ema_decay < 1, "dmd.ema_decay", "must be in [0, 1)")
        require(self.seed >= 0, "dmd.seed", "must be >= 0")
        require(self.first_step_fm >= 0, "dmd.first_step_fm", "must be >= 0 (0 = off)")
        require(self.regression >= 0, "dmd.regression", "must be >= 0 (0 = off)")
        require(1 <= self.regression_nfe <= 1000, "dmd.regression_nfe", "must be in [1, 1000] (Euler steps per "
                 "iteration)")
        require(self.max_bad_steps >= 1, "dmd.max_bad_steps", "must be >= 1")


@dataclass
class Recipe:
    teachers: dict[str, str] = field(default_factory=dict)
    student: StudentSection = field(default_factory=StudentSection)  # the few-step model: init, steps, times
    critic: CriticSection = field(default_factory=CriticSection)  # the fake score: init, lr, updates
    dmd: DMDSection = field(default_factory=DMDSection)  # the generator's loss, optimizer and batch
    data: DataSection = field(default_factory=DataSection)  # composition; the user's files
    tasks: TasksSection = field(default_factory=TasksSection)  # T2I:Edit and the edit categories' weights
    eval: EvalSection = field(default_factory=EvalSection)  # the quick evaluation while training
    run: RunSection = field(default_factory=RunSection)  # cadence, device, parallel layout
    roles: RolesSection = field(default_factory=RolesSection)  # full or lora, precision of what is frozen
    gan: GanSection = field(default_factory=GanSection)  # DMD2's GAN term on the critic's features (off)
    pairs: PairsSection = field(default_factory=PairsSection)  # regression onto cached teacher images (off)
    guidance: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # category -> K rows, validated
    # Built once by `recipe_from_raw` from the sections above; not read from a file, not part of the identity:
    known: tuple[dict[str, int], dict[str, int]] = field(default=({}, {}), init=False)  # data.categories(), read once
    weights: Guidance | None = field(default=None, init=False)  # `guidance` as the λ lookup the engine uses
    notes: list[str] = field(default_factory=list, init=False)  # one-line notes for the user (the commands print)

    def check(self) -> Recipe:
        require(bool(self.teachers), "teachers", "name at least one teacher, e.g. teachers: {base: teacher:base}")
        for role in ("student", "critic"):
            name = getattr(self, role).init_from
            require(name in self.teachers, f"{role}.init_from", f"unknown teacher {name!r}; teachers: "
                     f"{', '.join(self.teachers)}")
        self.known = t2i_known, edit_known = self.data.categories()
        self.data.check(t2i_known)
        for section in (self.student, self.critic, self.dmd, self.run, self.roles, self.gan, self.pairs):
            section.check()
        require(not self.gan.enabled() or not self.data.uses_files(), "gan", "the GAN term needs real images: "
                "the embedded world's; data files hold prompts and edit sources only (set its weights to 0)")
        require(not self.gan.enabled() or (self.run.parallel == "ddp" and not self.roles.gradient_checkpointing),
                "gan", "runs with run.parallel ddp and without roles.gradient_checkpointing")
        self.eval.check(self.data.uses_files())
        require(self.run.parallel == "ddp" or self.eval.every == 0 or self.data.uses_files(), "eval.every",
                 "the world's quick evaluation runs on rank 0 alone; with run.parallel fsdp set it to 0 and "
                 "evaluate the exported student")
        if self.data.uses_files():
            self._check_files(edit_known)
        t2i, edit = self.tasks.weights()
        if (t2i == 0 or t2i_known) and (edit == 0 or edit_known):  # else check_tasks() refuses it before training
            self.task_mix()
        return self

    def check_tasks(self) -> None:
        """Before training: both sides of tasks.ratio have items (a prompts-only recipe may still build a cache)."""
        t2i_known, edit_known = self.known
        t2i, edit = self.tasks.weights()
        require(t2i == 0 or bool(t2i_known), "tasks.ratio", f"{self.tasks.ratio} asks for T2I rows but data.prompts "
                 f"is not set")
        require(edit == 0 or bool(edit_known), "tasks.ratio", f"{self.tasks.ratio} asks for edit rows but "
                 f"data.edits is not set")
        self.task_mix()

    def _check_files(self, edit_known: dict[str, int]) -> None:
        """Data files: the levers name the files' categories; what needs the world's images is refused."""
        if self.tasks.edit_mix == TasksSection().edit_mix:  # the default: every category the edits file names
            self.tasks.edit_mix = {c: 1.0 for c in edit_known}
        require(self.dmd.first_step_fm == 0, "dmd.first_step_fm", "needs the world's target images; data files "
                 "hold prompts and edit sources only (set it to 0)")

    def categories(self) -> list[str]:
        """Every category a batch can hold, T2I first (the guidance table's rows)."""
        t2i_known, edit_known = self.known
        return list(dict.fromkeys([*t2i_known, *edit_known]))

    @property
    def timesteps(self) -> list[float]:
        return self.student.resolved_timesteps()

    def task_mix(self) -> TaskMix:
        """The sampler's levers (flashdistill.data.batches.TaskMix) from `data` and `tasks`."""
        t2i, edit = self.tasks.weights()
        d = self.data
        t2i_known, edit_known = self.known
        composition = d.composition or {c: float(n) for c, n in (d.counts or {}).items()}
        files = dict(t2i_categories=tuple(t2i_known), edit_categories=tuple(edit_known), t2i_sizes=t2i_known,
                     edit_sizes=edit_known) if d.uses_files() else {}
        mix = (FileMix if files else TaskMix)(
            t2i_weight=t2i, edit_weight=edit, edit_mix=dict(self.tasks.edit_mix),
            composition=composition or {c: 1.0 for c in t2i_known},
            t2i_pool={c: int(n) for c, n in (d.counts or {}).items() if n > 0}, **files)
        where = {"t2i_weight": "tasks.ratio", "edit_weight": "tasks.ratio", "composition": "data",
                 "edit_mix": "tasks.edit_mix", "t2i_pool": "data.counts"}
        try:
            return mix.validate("mix")
        except UserError as err:  # name the recipe's key, not the sampler's
            msg = str(err)
            for name, key in where.items():
                msg = msg.replace(f"mix.{name}", key)
            raise UserError(msg) from None

    def to_dict(self) -> dict:
        """The recipe's settings (what checkpoints record and resumes compare), without what is built from them."""
        return {f.name: asdict(value) if is_dataclass(value) else copy.deepcopy(value)
                for f in fields(self) if f.init for value in [getattr(self, f.name)]}


def recipe_from_raw(raw: dict | None, overrides: list[str] | None = None) -> Recipe:
    """The recipe, built once: the strict loader reads every section but `guidance`, whose rows name the teachers
    and the categories and so are checked after them (`parse_guidance`); then `known`, `weights` and `notes`."""
    raw = loader.with_overrides(raw, overrides)
    moved = _micro_batch_moved(raw)
    guidance = raw.pop("guidance", None)
    for name, spec in (raw.get("teachers") or {}).items() if isinstance(raw.get("teachers"), dict) else ():
        require(spec is not None, f"teachers.{name}", f"not set: pass --set teachers.{name}=PATH")
    recipe = from_dict(Recipe, raw)
    recipe.check()
    recipe.notes += moved
    if recipe.data.uses_files():
        guidance = _rows_the_files_hold(guidance, recipe, overrides or [])
    recipe.guidance = parse_guidance(guidance, list(recipe.teachers), len(recipe.timesteps), recipe.categories())
    recipe.weights = Guidance(recipe.guidance, list(recipe.teachers))
    return recipe


def _micro_batch_moved(raw: dict) -> list[str]:
    """`dmd.micro_batch` (how many rows a pass holds: hardware, not the algorithm) is now `run.micro_batch`; the old
    key is read into the new one, with a note."""
    dmd = raw.get("dmd")
    if not isinstance(dmd, dict) or "micro_batch" not in dmd:
        return []
    if raw.get("run") is None:  # absent, or `run:` with nothing under it
        raw["run"] = {}
    run = raw["run"]
    if not isinstance(run, dict):
        return []  # the strict loader refuses `run` itself, naming it
    require("micro_batch" not in run, "dmd.micro_batch", "is run.micro_batch's old name; give run.micro_batch only")
    run["micro_batch"] = dmd.pop("micro_batch")
    return ["dmd.micro_batch is now run.micro_batch (read as such)"]


def _rows_the_files_hold(guidance, recipe: Recipe, overrides: list[str]):
    """With data files the categories are the user's: a guidance row of the recipe file for a category the files
    do not hold is left out and noted in `recipe.notes` (the commands print it; a shipped recipe names `text` and
    `text_editing`); a row set on the command line for an unknown category is kept, so parse_guidance refuses it
    (typo protection)."""
    if not isinstance(guidance, dict):
        return guidance
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    if "guidance" in keys:
        return guidance
    by_hand = {k.split(".")[1] for k in keys if k.startswith("guidance.")}
    known = set(recipe.categories())
    unused = [c for c in guidance if c != "default" and c not in known and c not in by_hand]
    if unused:
        recipe.notes.append(f"guidance rows for {', '.join(unused)} are not used: the data files hold no such "
                            f"category (their categories: {', '.join(recipe.categories())})")
    return {c: rows for c, rows in guidance.items() if c not in unused}


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply dotted overrides, validate. Bad input -> UserError naming the file or the key."""
    return recipe_from_raw(loader.read_config_file(path, "recipe"), overrides)


# Keys added after checkpoints existed, left out of the fingerprint at their defaults so those checkpoints resume:
# run.parallel (ddp was every checkpoint's layout), roles.frozen_dtype (auto is fp32 on a CPU), gan (off),
# dmd.regression (off) and its dmd.regression_nfe, pairs (off), roles.lora_targets (the default targets).
LEGACY_DEFAULTS = (("run.parallel", lambda v: v == "ddp"), ("roles.frozen_dtype", lambda v: v == "auto"),
                   ("gan", lambda g: g == asdict(GanSection())), ("dmd.regression", lambda v: v == 0),
                   ("dmd.regression_nfe", lambda v: v == 8), ("pairs", lambda p: p == asdict(PairsSection())),
                   ("roles.lora_targets", lambda v: v is None))


def resume_fingerprint(recipe: Recipe) -> dict:
    """The recipe minus RESUMABLE_KEYS: a resume is refused when this differs from the checkpoint's."""
    return loader.resume_fingerprint(recipe, RESUMABLE_KEYS, LEGACY_DEFAULTS)
