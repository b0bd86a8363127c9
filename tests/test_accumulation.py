"""Gradient accumulation (`run.micro_batch`): a run's result does not depend on its micro-batch.

The global batch, every random draw and each row's loss weight stay the same; only how many rows go through one
forward/backward changes, so micro-batches of 1, 2 and 4 rows must give the losses, gradient norms and weights of
one pass of 4 (fp32, tiny Qwen-Image folder, roles.mode lora, 3 iterations with edit and T2I rows) -- on one rank,
and on two torchrun ranks (FSDP2, gradients synchronised once per update) against one rank without accumulation.

Tolerance: the same sums taken in another order (per micro-batch, then added) in float32.
- Gradients of one update, from the same weights: relative 1e-4 of the gradient's norm (measured 1.2e-5 for the
  student, whose batch mixes text lengths: the micro-batches pad and mask text differently; 3e-7 for the critic).
- Logged losses and gradient norms over 3 iterations: relative 1e-5 (measured <= 2e-7 on this CPU). Weighting one
  micro-batch wrongly by 2x moves the next iteration's loss by ~1e-3 relative (tried: caught).
- Weights after 3 AdamW steps at lr 1e-2: absolute 5e-5. Adam divides each gradient element by its own running
  scale, so an element whose gradient is near float32 rounding (e.g. LoRA A entries while B is still ~0) can move
  by a sizeable fraction of lr on a rounding difference: measured up to 1.1e-5, i.e. 0.04% of the 3 x lr = 3e-2 an
  element can move in 3 steps. The gradient test above is the exact check; this one shows nothing else differs
  (EMA, critic, optimizer state over several updates).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashdistill.distill.iteration import micro_batches
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"
FAST = ["roles.lora_rank=4", "dmd.batch_size=4", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
        "run.log_every=1", "dmd.iterations=3", "run.checkpoint_every=3", "dmd.lr=1e-2", "critic.lr=1e-2",
        "dmd.ema_decay=0.5", "roles.frozen_dtype=fp32", "run.micro_batch=0"]
# Weights: AdamW at lr 1e-2 turns float noise in a near-zero gradient element into a step of up to lr, so a few
# elements of 2 ranks against 1 differ by up to ~7e-5 after 3 steps (measured); a missed synchronisation or a
# micro-batch weighted wrongly moves elements by ~1e-2.
RTOL_LOG, ATOL_WEIGHTS = 1e-5, 2e-4
KEYS = ("loss", "loss_critic", "grad_norm", "grad_norm_critic")
pytestmark = pytest.mark.usefixtures("one_thread")


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _weights(run: Path) -> dict:
    return {r: load_file(str(run / "checkpoint" / f"{r}.safetensors")) for r in ("student", "ema", "critic")}


def _same(a: Path, b: Path) -> None:
    la, lb = _log(a), _log(b)
    assert [r["k"] for r in la] == [r["k"] for r in lb] and [r["edit_rows"] for r in la] == [r["edit_rows"]
                                                                                             for r in lb]
    for key in KEYS:
        assert [r[key] for r in la] == pytest.approx([r[key] for r in lb], rel=RTOL_LOG), key
    wa, wb = _weights(a), _weights(b)
    for role in wa:
        assert set(wa[role]) == set(wb[role])
        for key in wa[role]:
            torch.testing.assert_close(wa[role][key], wb[role][key], atol=ATOL_WEIGHTS, rtol=0, msg=f"{role}:{key}")


@pytest.fixture(scope="module")
def one_pass(qwen_world, tmp_path_factory):
    _, sets = qwen_world
    out = tmp_path_factory.mktemp("accumulation") / "one-pass"
    train_distill(load_recipe(RECIPE, sets + FAST), out)
    log = _log(out)
    assert any(0 < r["edit_rows"] < 4 for r in log), "the batches should mix T2I and edit rows"
    return out


def test_micro_batches_cover_the_rows_once():
    assert micro_batches(4, 0) == [slice(0, 4)]
    assert micro_batches(4, 3) == [slice(0, 3), slice(3, 4)]
    assert [s.stop - s.start for s in micro_batches(5, 2)] == [2, 2, 1]


def _grads(sets: list[str], micro: int) -> dict:
    """The student's and the critic's gradients of iteration 0's generator update and first critic update."""
    from flashdistill.distill import iteration
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.runtime.dist import Dist

    recipe = load_recipe(RECIPE, sets + FAST + [f"run.micro_batch={micro}", "critic.updates=1"])
    dist = Dist()
    roles = build_roles(recipe, dist)
    ctx = iteration.build_context(recipe, roles, dist, Path("unused"), None)
    x_data, cond, uncond, draws = iteration.build_inputs(ctx, 0)
    x = iteration.generator_update(ctx, x_data, cond, uncond, draws).x
    grads = {f"student.{n}": p.grad.clone() for n, p in roles.student.named_parameters() if p.grad is not None}
    roles.opt_critic.step = lambda: None  # keep the critic's gradient, not its step
    iteration.critic_update(ctx, x, cond, draws)
    grads |= {f"critic.{n}": p.grad.clone() for n, p in roles.critic.named_parameters() if p.grad is not None}
    return grads


def test_one_update_has_the_same_gradient_in_micro_batches(qwen_world):
    _, sets = qwen_world
    whole, parts = _grads(sets, 0), _grads(sets, 1)
    assert set(whole) == set(parts) and any(k.startswith("critic.") for k in whole)
    for role in ("student", "critic"):
        a = torch.cat([whole[k].flatten() for k in whole if k.startswith(role)])
        b = torch.cat([parts[k].flatten() for k in parts if k.startswith(role)])
        assert a.norm() > 0 and (a - b).norm() <= 1e-4 * a.norm(), role


@pytest.mark.parametrize("micro", [1, 2, 4])
def test_micro_batches_match_one_pass(qwen_world, one_pass, tmp_path, micro):
    _, sets = qwen_world
    train_distill(load_recipe(RECIPE, sets + FAST + [f"run.micro_batch={micro}"]), tmp_path / "run")
    _same(one_pass, tmp_path / "run")


def test_two_fsdp_ranks_accumulating_match_one_rank(qwen_world, one_pass, tmp_path):
    """SLOW (~30 s): 2 gloo ranks, 2 rows each in micro-batches of 1, gradients synchronised once per update."""
    _, sets = qwen_world
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "flashdistill", "distill", str(RECIPE), "--out", str(tmp_path / "two"), "--set", *sets, *FAST,
           "run.micro_batch=1", "run.parallel=fsdp"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    la, lb = _log(one_pass), _log(tmp_path / "two")
    for key in KEYS:
        assert [r[key] for r in la] == pytest.approx([r[key] for r in lb], rel=1e-4), key
    from flashdistill.runtime.sharded import read_full

    for role, ref in _weights(one_pass).items():
        got = read_full(tmp_path / "two" / "checkpoint", f"{role}/")
        assert set(got) == set(ref), role
        for key in ref:
            torch.testing.assert_close(got[key], ref[key], atol=ATOL_WEIGHTS, rtol=0,
                                       msg=lambda m, where=f"{role}:{key}": f"{where} {m}")


def test_the_old_micro_batch_key_is_read_into_run(tmp_path):
    """`dmd.micro_batch` moved to `run.micro_batch`: the old key is read there with a note (also under an empty
    `run:`), and giving both is refused naming the old key."""
    from flashdistill.errors import UserError

    path = tmp_path / "r.yaml"
    path.write_text("teachers: {base: teacher:base}\ndmd: {micro_batch: 2}\nrun:\n")
    recipe = load_recipe(path)
    assert recipe.run.micro_batch == 2 and "micro_batch" not in recipe.to_dict()["dmd"]
    assert any("run.micro_batch" in note for note in recipe.notes)
    with pytest.raises(UserError, match=r"^dmd\.micro_batch: "):
        load_recipe(path, ["run.micro_batch=1"])
