"""The three roles of DMD (frozen teachers, trainable student and critic), their optimizers, and data parallelism.

- Teachers are named in the recipe by folder (FlowModel.save_pretrained layout) or as `teacher:NAME`, the shipped
  teacher in `src/flashdistill/assets/teachers/NAME/` (resolved by `flashdistill.pipeline.teacher_folder`); with a
  Qwen-Image pipeline folder as the base, by pipeline folder or diffusers LoRA file. The recipe's family
  (distill/families.py) resolves and loads them. They are frozen and evaluated in eval mode.
- The student starts as a copy of the teacher `student.init_from`, the critic (fake score) as a copy of
  `critic.init_from` (the base teacher, paper §2.2); the EMA of the student starts as the student.
- Precision (`roles.frozen_dtype`, `frozen_dtype()`): frozen weights in bf16 on CUDA by default, read straight into
  bf16; student, critic, their gradients, AdamW moments and the EMA in fp32 (`trainable_copy`).
- AdamW for both trainable roles, constant learning rates (DMD2).
- Under `torchrun --nproc_per_node=N` (WORLD_SIZE > 1) the process group is created here (NCCL on CUDA, gloo on
  CPU) and student and critic are wrapped in DistributedDataParallel; teachers and EMA are plain replicas. Every
  rank builds the same global batch and takes its own contiguous rows, so N ranks at global batch B follow the
  trajectory of 1 rank at batch B (`tests/test_distill.py::test_two_ranks_match_one`).
- With `run.parallel: fsdp` every role is sharded instead (FSDP2, distill/sharding.py): teachers are read on rank 0
  and broadcast into shards; student, critic and EMA are shard-wise copies; the same rows per rank as DDP.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist

from flashdistill.distill.recipe import Recipe
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.shipped import teacher_folder

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous share of a global batch."""
        per = batch_size // self.world
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, value: float) -> float:
        """The mean of a number over ranks (a no-op with one rank)."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)  # NCCL reduces device tensors only
        torch_dist.all_reduce(t)
        return float(t) / self.world

    def any(self, *flags: bool) -> tuple[bool, ...]:
        """Whether each flag is set on some rank (one collective for all of them)."""
        if self.world == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([float(f) for f in flags], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return tuple(bool(x) for x in t.tolist())

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


def setup_distributed(device: str, batch_size: int) -> Dist:
    """Read torchrun's environment; create the process group when there is more than one rank."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise UserError("run.device: cuda was asked for but no CUDA device is available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(f"cuda:{local}" if want_cuda else "cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if world > 1:
        if batch_size % world:
            raise UserError(f"dmd.batch_size: {batch_size} does not split evenly over {world} ranks")
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if want_cuda else "gloo")
    return Dist(rank, world, dev)


def destroy_distributed() -> None:
    """Destroy the process group, if this process made one."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def teardown_distributed(code: int) -> int:
    """End a process that may have made a process group, with exit code `code`.

    One rank (world 1, no group): returns `code` for the caller to return. Under torchrun: destroys the process
    group and ends the process at once with `code` (`os._exit`), skipping interpreter finalization. With gloo on a
    loaded CPU about one rank exit in ten aborted *after* its work was done and written ("terminate called without
    an active exception", SIGABRT; faulthandler: main thread, no Python frame, i.e. C++ teardown of torch/gloo
    objects during finalization, the class of pytorch/pytorch#179291 and #190489), which torchrun reports as a
    failed run. Callers close their files and loggers first; stdout and stderr are flushed here."""
    destroy_distributed()
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return code
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def frozen_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    """`roles.frozen_dtype` on `device`: what the frozen weights (base, teachers, teacher adapters) are held in.
    `auto` is bf16 on CUDA (half the bytes of the largest state) and fp32 on a CPU. What trains is always fp32."""
    name = recipe.roles.frozen_dtype
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def trainable_copy(model: FlowModel) -> FlowModel:
    """A trainable fp32 copy of a frozen model (student or full critic: fp32 master weights, grads and moments)."""
    return copy.deepcopy(model).to(torch.float32).train().requires_grad_(True)


def resolve_teacher(spec: str, key: str) -> Path:
    """A teacher folder from its recipe spec: a path, or `teacher:NAME` for the shipped teacher NAME."""
    try:
        return teacher_folder(spec)
    except UserError as err:
        raise UserError(f"{key}: {err}") from None


def load_teachers(recipe: Recipe, device: torch.device, family=None, dist: Dist | None = None
                  ) -> dict[str, FlowModel]:
    """Every named teacher, frozen, in eval mode; teachers sharing a path share one module. `family`
    (distill/families.py) reads the paths; default: the recipe's. With `dist` under fsdp: sharded teachers."""
    from flashdistill.distill import sharding

    family = family or _family(recipe)
    dtype = frozen_dtype(recipe, device)
    loaded: dict[Path, FlowModel] = {}
    teachers = {}
    for name, spec in recipe.teachers.items():
        path = family.resolve(spec, f"teachers.{name}").resolve()
        if path not in loaded and dist is not None and sharding.active(recipe, dist):
            loaded[path] = sharding.load(family, path, recipe, dist, _frozen, dtype).eval()
        elif path not in loaded:
            loaded[path] = family.load_model(path, dtype).to(device).eval().requires_grad_(False)
        teachers[name] = loaded[path]
    spelling = {name: t.config.spell_quoted for name, t in teachers.items()}
    if len(set(spelling.values())) > 1:
        raise UserError(f"teachers: all teachers must share one text convention (model.spell_quoted), got {spelling}")
    shapes = {name: (t.config.resolution, t.config.channels) for name, t in teachers.items()}
    if len(set(shapes.values())) > 1:
        raise UserError(f"teachers: all teachers must share resolution and channels, got {shapes}")
    return teachers


def _frozen(model: torch.nn.Module) -> None:
    model.requires_grad_(False)


def _family(recipe: Recipe):
    from flashdistill.distill.families import family_for

    return family_for(recipe)


@dataclass
class Roles:
    teachers: dict[str, FlowModel]
    student: FlowModel  # the bare module (no-grad passes, checkpoints, export)
    ema: FlowModel
    critic: FlowModel
    opt_student: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    student_train: torch.nn.Module  # what the grad passes go through: DDP wrapper or the bare module
    critic_train: torch.nn.Module
    family: object = None  # distill/families.py: what reads the teachers, the batches, the export

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"student": self.student, "ema": self.ema, "critic": self.critic}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"optimizer": self.opt_student, "critic_optimizer": self.opt_critic}


def _wrap(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [dist.device.index] if dist.device.type == "cuda" else None
    # The last block's text-stream outputs never reach the image tokens, so some parameters get no gradient.
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)


def build_roles(recipe: Recipe, dist: Dist, family=None) -> Roles:
    family = family or _family(recipe)
    if recipe.roles.mode == "lora":  # one frozen base shared by every role (distill/lora_roles.py)
        from flashdistill.distill.lora_roles import build_lora_roles

        return build_lora_roles(recipe, dist, family)
    from flashdistill.distill import sharding

    if sharding.active(recipe, dist):
        return _sharded_roles(recipe, dist, family)
    teachers = load_teachers(recipe, dist.device, family)
    student = trainable_copy(teachers[recipe.student.init_from])
    critic = trainable_copy(teachers[recipe.critic.init_from])
    ema = copy.deepcopy(student).eval().requires_grad_(False)
    if recipe.roles.gradient_checkpointing:
        for model in (student, critic):
            model.transformer.enable_gradient_checkpointing()
    d, c = recipe.dmd, recipe.critic
    opt_student = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    return Roles(teachers, student, ema, critic, opt_student, opt_critic, _wrap(student, dist), _wrap(critic, dist),
                 family)


def _sharded_roles(recipe: Recipe, dist: Dist, family) -> Roles:
    """`roles.mode: full` under `run.parallel: fsdp`: every role sharded (distill/sharding.py)."""
    from flashdistill.distill import sharding

    teachers = load_teachers(recipe, dist.device, family, dist)

    def path(name: str) -> Path:
        return family.resolve(recipe.teachers[name], f"teachers.{name}").resolve()

    def trainable(model: torch.nn.Module) -> None:
        model.train().requires_grad_(True)
        if recipe.roles.gradient_checkpointing:
            model.transformer.enable_gradient_checkpointing()

    s_name, c_name = recipe.student.init_from, recipe.critic.init_from
    student = sharding.clone(teachers[s_name], family, path(s_name), recipe, dist, trainable)
    critic = sharding.clone(teachers[c_name], family, path(c_name), recipe, dist, trainable)
    ema = sharding.clone(student, family, path(s_name), recipe, dist, _frozen).eval()
    d, c = recipe.dmd, recipe.critic
    opt_student = torch.optim.AdamW(student.parameters(), lr=d.lr, weight_decay=d.weight_decay)
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    return Roles(teachers, student, ema, critic, opt_student, opt_critic, student, critic, family)
