"""`run.compile: blocks` (models/compiled.py): the compiled transformer blocks compute what eager ones compute, under
peft LoRA roles on one base, per-block gradient checkpointing and bf16 autocast; a compiler that does not work is
one line naming run.compile, exit 2.

torch.compile builds C++ kernels on a CPU (g++): the grad pass below is two compiled variants of the block (block 0
gets an input that needs no grad, block 1 one that does), ~20-60 s on a 2-core CPU with a cold inductor cache.
Every role and iteration, compiled against eager in fp32: `python benchmarks/compile_cpu.py` (minutes)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flashdistill.conditioning import Cond
from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.recipe import load_recipe
from flashdistill.runtime.dist import Dist

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "distill_tiny.yaml"
# bf16 autocast: eager rounds every op's output to bf16 (unit roundoff 2^-9 = 2.0e-3), a fused compiled kernel keeps
# its intermediates in fp32 and rounds once. Over the ~20 roundings of a block pair the differences add up like a
# random walk (sqrt(20) x 2e-3 = 9e-3 per element, the bound on velocity and gradient norms below); the loss, a mean
# over 6k squared outputs, averages most of it out. Measured (torch 2.13, CPU): loss 8e-6, velocity 2.7e-3,
# gradients 2.6e-3 in relative norm.
RTOL_LOSS, RTOL_V, RTOL_GRAD = 1e-4, 1e-2, 1e-2
pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(teachers, lora_teacher, tmp_path, *extra):
    return load_recipe(TINY, [f"teachers.base={teachers / 'base'}", f"teachers.specialized={lora_teacher}",
                              f"run.text_cache={tmp_path}", "roles.mode=lora", "roles.lora_rank=4",
                              "roles.gradient_checkpointing=true", "dmd.bf16=true", *extra])


def _grad_pass(roles):
    """The student's velocity, a loss on it and its gradient w.r.t. the student adapter, under bf16 autocast, with
    the student adapter's B made non-zero (seeded) so every LoRA matrix gets a gradient."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in roles.student.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0.3, 0.8])
    cond = Cond(torch.randn(2, 5, 384, generator=g), torch.ones(2, 5, dtype=torch.bool), category=["text"] * 2)
    with torch.autocast("cpu", torch.bfloat16):
        v = roles.student(z, t, cond).float()
    loss = (v - z).square().mean()
    loss.backward()
    # eager leaves None where a parameter's output never reaches v (the last block's text stream), compiled zeros
    grads = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten()
                       for _, p in roles.student.named_parameters()])
    return loss.item(), v.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_compiled_blocks_match_eager_under_lora_checkpointing_and_bf16(teachers, lora_teacher, tmp_path):
    eager = build_roles(_recipe(teachers, lora_teacher, tmp_path), Dist())
    compiled = build_roles(_recipe(teachers, lora_teacher, tmp_path, "run.compile=blocks"), Dist())
    blocks = compiled.student.base.transformer.transformer_blocks
    assert all(b._compiled_call_impl is not None for b in blocks)  # every repeated block, in place
    assert all(b._compiled_call_impl is None for b in eager.student.base.transformer.transformer_blocks)
    loss_e, v_e, g_e = _grad_pass(eager)
    loss_c, v_c, g_c = _grad_pass(compiled)
    assert g_e.abs().sum() > 0
    print(f"relative difference: loss {abs(loss_c - loss_e) / loss_e:.2e}, v {_rel(v_c, v_e):.2e}, "
          f"grad {_rel(g_c, g_e):.2e}")
    assert abs(loss_c - loss_e) / loss_e < RTOL_LOSS, (loss_c, loss_e)
    assert _rel(v_c, v_e) < RTOL_V and _rel(g_c, g_e) < RTOL_GRAD, (_rel(v_c, v_e), _rel(g_c, g_e))
    assert not torch.equal(v_c, v_e)  # fused kernels round elsewhere: the compiled path really ran


def test_a_compiler_that_does_not_work_is_one_line(qwen_world, tmp_path):
    """No working C++ compiler (CXX names none; a fresh inductor cache, so nothing compiled earlier is reused): the
    CLI stops before training with one line naming run.compile, exit 2."""
    _, sets = qwen_world
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ic"),
           "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "flashdistill", "distill", str(ROOT / "configs" / "qwen-image-flash.yaml"), "--out",
           str(tmp_path / "run"), "--set", *sets, "roles.lora_rank=4", "dmd.batch_size=2", "dmd.bf16=false",
           "run.device=cpu", "dmd.iterations=1", "run.compile=blocks"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # (peft warns on stderr too)
    assert done.returncode == 2, done.stderr[-2000:]
    assert errors == [done.stderr.strip().splitlines()[-1]] and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert errors[0].startswith("error: run.compile: torch.compile failed") and "run.compile: none" in errors[0]
