"""roles.mode: lora (prototype): one frozen base shared by every role; student, critic and EMA are adapters, a
specialized LoRA teacher is an adapter on the same base; training moves adapters only; resume is exact; the export
reloads as a fused model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashdistill.conditioning import Cond
from flashdistill.distill.export import load_student
from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.layouts.lora import AdapterView
from flashdistill.distill.layouts.plan import lora_params
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.text import TextEncoder
from flashdistill.runtime.dist import Dist

TINY = Path(__file__).resolve().parents[1] / "configs" / "distill_tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def recipe(teachers, lora_teacher, cache, *extra):
    return load_recipe(TINY, [f"teachers.base={teachers / 'base'}", f"teachers.specialized={lora_teacher}",
                              f"run.text_cache={cache}", "roles.mode=lora", "roles.lora_rank=4", *extra])


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 3, 32, 32, generator=g)
    cond = Cond(torch.randn(2, 5, 384, generator=g), torch.ones(2, 5, dtype=torch.bool), category=["text"] * 2)
    return z, torch.tensor([0.3, 0.8]), cond


def test_one_base_and_adapters(teachers, lora_teacher, tmp_path):
    roles = build_roles(recipe(teachers, lora_teacher, tmp_path), Dist())
    base = roles.student.base
    views = [roles.student, roles.ema, roles.critic, *roles.teachers.values()]
    assert all(isinstance(v, AdapterView) and v.base is base for v in views)  # one transformer in memory
    assert sum(p.numel() for p in roles.student.parameters()) == lora_params(FlowModel.from_pretrained(
        teachers / "base").transformer, 4)  # the planner's count is what peft adds
    z, t, cond = _inputs()
    with torch.no_grad():
        v_base = roles.teachers["base"](z, t, cond)
        assert torch.equal(roles.student(z, t, cond), v_base)  # B = 0: every adapter starts as the base
        assert torch.equal(roles.critic(z, t, cond), v_base)
        fused = FlowModel.from_pretrained(lora_teacher)  # base + adapter fused (models/lora.py)
        v_spec = roles.teachers["specialized"](z, t, cond)
        assert torch.allclose(v_spec, fused(z, t, cond), atol=1e-5) and not torch.allclose(v_spec, v_base)
    # a student grad pass touches the student adapter only, even when other adapters run before backward
    loss = roles.student(z, t, cond).square().mean()
    with torch.no_grad():
        roles.critic(z, t, cond), roles.teachers["specialized"](z, t, cond)
    loss.backward()
    got = [name for name, p in roles.student.named_parameters() if p.grad is not None]
    # (the last block's text stream never reaches the image tokens: its adapters get no gradient)
    assert len(got) > len(roles.student.state_dict()) // 2
    assert all(p.grad is None for p in roles.critic.parameters())
    assert all(p.grad is None for name, p in base.transformer.named_parameters() if "lora_" not in name)


def test_training_resume_and_export(teachers, lora_teacher, tmp_path, encoder):
    r = recipe(teachers, lora_teacher, tmp_path / "cache", "dmd.iterations=4", "run.checkpoint_every=2")
    straight = train_distill(r, tmp_path / "straight", encoder=encoder)
    train_distill(r, tmp_path / "split", encoder=encoder, stop_after=2)
    train_distill(r, tmp_path / "split", resume=True, encoder=encoder)
    for role in ("student", "ema", "critic"):
        a = load_file(str(tmp_path / "straight" / "checkpoint" / f"{role}.safetensors"))
        b = load_file(str(tmp_path / "split" / "checkpoint" / f"{role}.safetensors"))
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), role
        assert all("lora_" in k for k in a)  # checkpoints hold adapters, not the 20B base
        assert any(k.endswith("lora_B.weight") and a[k].abs().max() > 0 for k in a), role  # it trained
    roles = build_roles(r, Dist())  # fresh: the base is untouched by training, so compare against it
    student = load_student(straight["student"])
    z, t, cond = _inputs(1)
    with torch.no_grad():
        ema = load_file(str(tmp_path / "straight" / "checkpoint" / "ema.safetensors"))
        roles.ema.load_state_dict(ema)
        assert torch.allclose(student(z, t, cond), roles.ema(z, t, cond), atol=1e-5)
        assert not torch.allclose(roles.ema(z, t, cond), roles.teachers["base"](z, t, cond), atol=1e-4)


def test_full_critic_and_errors(teachers, lora_teacher, tmp_path):
    roles = build_roles(recipe(teachers, lora_teacher, tmp_path, "critic.lora=false"), Dist())
    assert isinstance(roles.critic, FlowModel) and roles.critic.transformer is not roles.student.base.transformer
    assert sum(p.numel() for p in roles.critic.parameters()) == roles.critic.num_params()
    with pytest.raises(UserError, match="roles.mode"):
        recipe(teachers, lora_teacher, tmp_path, "roles.mode=half")
    with pytest.raises(UserError, match="must be a full model"):
        build_roles(recipe(teachers, lora_teacher, tmp_path, "student.init_from=specialized",
                           "critic.init_from=specialized"), Dist())


def test_gradient_checkpointing_changes_memory_not_math(teachers, lora_teacher, tmp_path):
    grads = []
    for flag in ("false", "true"):
        roles = build_roles(recipe(teachers, lora_teacher, tmp_path, f"roles.gradient_checkpointing={flag}"), Dist())
        assert roles.student.base.transformer.gradient_checkpointing == (flag == "true")
        z, t, cond = _inputs(2)
        with torch.no_grad():  # make the adapter non-trivial, identically in both runs
            for i, p in enumerate(roles.student.parameters()):
                p.fill_(0.01 * ((i % 5) - 2))
        roles.student(z, t, cond).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in roles.student.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


@pytest.mark.parametrize("critic_lora", ["true", "false"])
def test_checkpointed_blocks_recompute_under_the_adapter_they_ran_under(teachers, lora_teacher, tmp_path, critic_lora):
    """As in an iteration: the student's forward, then the teachers (adapters off, the specialized adapter) and the
    critic run on the same shared base before one backward that reaches both the student (through the critic, as
    the GAN term does) and the critic. Per-block checkpointing recomputes each block in backward; it must do so
    under the adapter that block's forward ran under, not the one active when backward starts: the gradients of
    every trainable adapter equal those without checkpointing."""
    grads = []
    for flag in ("false", "true"):
        roles = build_roles(recipe(teachers, lora_teacher, tmp_path, f"roles.gradient_checkpointing={flag}",
                                   f"critic.lora={critic_lora}"), Dist())
        z, t, cond = _inputs(3)
        with torch.no_grad():  # distinct non-trivial adapters: a block recomputed under the wrong one differs
            for scale, role in ((0.01, roles.student), (-0.02, roles.critic)):
                for i, p in enumerate(role.parameters()):
                    if p.dim() > 1 or role is roles.student or critic_lora == "true":
                        p.add_(scale * ((i % 5) - 2))
        x = roles.student(z, t, cond)
        y = roles.critic(x, t, cond)
        with torch.no_grad():
            for teacher in roles.teachers.values():  # the last one leaves the base with another adapter active
                teacher(z, t, cond)
        (x.square().mean() + y.square().mean()).backward()
        grads.append({f"{name}.{n}": p.grad.clone() for name, role in (("student", roles.student),
                                                                        ("critic", roles.critic))
                      for n, p in role.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("critic.") for k in grads[0])
    worst = max((grads[0][n] - grads[1][n]).abs().max().item() for n in grads[0])
    assert worst < 1e-5, worst


def test_adapters_on_the_recipes_targets_train_and_export(teachers, lora_teacher, tmp_path, encoder):
    """roles.lora_targets puts the adapters on the named modules (here the timestep modulation, which the default
    targets leave frozen): peft's parameters match the planner's count, they train, and the export reloads."""
    targets = ["to_q", "img_mod.1", "txt_mod.1"]
    r = recipe(teachers, lora_teacher, tmp_path / "cache", "dmd.iterations=2",
               f"roles.lora_targets=[{','.join(targets)}]")
    roles = build_roles(r, Dist())
    names = [n for n, _ in roles.student.named_parameters()]
    assert any(".img_mod.1.lora_" in n for n in names) and not any(".to_k.lora_" in n for n in names)
    assert sum(p.numel() for p in roles.student.parameters()) == lora_params(
        FlowModel.from_pretrained(teachers / "base").transformer, 4, targets)
    done = train_distill(r, tmp_path / "run", encoder=encoder)
    ema = load_file(str(tmp_path / "run" / "checkpoint" / "ema.safetensors"))
    assert any(".img_mod.1.lora_B" in k and v.abs().max() > 0 for k, v in ema.items())  # the modulation trained
    roles.ema.load_state_dict(ema)
    z, t, cond = _inputs(1)
    with torch.no_grad():
        assert torch.allclose(load_student(done["student"])(z, t, cond), roles.ema(z, t, cond), atol=1e-5)
    with pytest.raises(UserError, match=r"roles.lora_targets: img_mod.7 match no linear layer"):  # peft skips it
        build_roles(recipe(teachers, lora_teacher, tmp_path / "cache", "roles.lora_targets=[to_q,img_mod.7]"), Dist())
