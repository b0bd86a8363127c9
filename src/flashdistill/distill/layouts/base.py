"""What every role layout builds: `Roles` (frozen teachers, trainable student and critic, the student's EMA, their
optimizers), and the precision of frozen and trainable weights.

- Precision (`roles.frozen_dtype`, `frozen_dtype()`): frozen weights in bf16 on CUDA by default, read straight into
  bf16; student, critic, their gradients, AdamW moments and the EMA in fp32 (`trainable_copy`).
- AdamW for both trainable roles, constant learning rates (DMD2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from flashdistill.distill.families import Family
from flashdistill.distill.recipe import CriticSection, DMDSection
from flashdistill.models.mmdit import FlowModel


def frozen_dtype(name: str, device: torch.device) -> torch.dtype:
    """`roles.frozen_dtype` (`name`) on `device`: what the frozen weights (base, teachers, teacher adapters) are held
    in. `auto` is bf16 on CUDA (half the bytes of the largest state) and fp32 on a CPU. What trains is always fp32."""
    if name == "auto":
        name = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if name == "bf16" else torch.float32


def trainable_copy(model: FlowModel) -> FlowModel:
    """A trainable fp32 copy of a frozen model (student or full critic: fp32 master weights, grads and moments)."""
    return copy.deepcopy(model).to(torch.float32).train().requires_grad_(True)


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
    family: Family  # distill/families.py: what reads the teachers, the batches, the export
    gan_head: torch.nn.Module | None = None  # DMD2's classifier on the critic's features (distill/gan.py), if on
    opt_gan: torch.optim.Optimizer | None = None

    def modules(self) -> dict[str, torch.nn.Module]:
        found = {"student": self.student, "ema": self.ema, "critic": self.critic}
        return found if self.gan_head is None else {**found, "gan_head": self.gan_head}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        found = {"optimizer": self.opt_student, "critic_optimizer": self.opt_critic}
        return found if self.opt_gan is None else {**found, "gan_optimizer": self.opt_gan}


def adamw_roles(teachers: dict[str, FlowModel], student: FlowModel, ema: FlowModel, critic: FlowModel,
                dmd: DMDSection, critic_section: CriticSection, family: Family, *,
                student_train: torch.nn.Module | None = None, critic_train: torch.nn.Module | None = None) -> Roles:
    """The roles every layout builds: AdamW on the student at `dmd.lr` / `dmd.weight_decay` and on the critic at
    `critic.lr` / `critic.weight_decay` (constant rates, DMD2); the grad passes go through `student_train` /
    `critic_train` (a DDP wrapper) or, when None, the bare modules."""
    opt_student = torch.optim.AdamW(student.parameters(), lr=dmd.lr, weight_decay=dmd.weight_decay)
    opt_critic = torch.optim.AdamW(critic.parameters(), lr=critic_section.lr, weight_decay=critic_section.weight_decay)
    return Roles(teachers=teachers, student=student, ema=ema, critic=critic, opt_student=opt_student,
                 opt_critic=opt_critic, student_train=student_train or student, critic_train=critic_train or critic,
                 family=family)
