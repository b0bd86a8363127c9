"""`run.parallel: fsdp` on the tiny Qwen-Image folder with `torchrun --standalone --nproc_per_node=2` (gloo, CPU):
two sharded ranks follow one plain rank at the same global batch in both role modes (losses and weights over 10
iterations), the gathered export loads into diffusers, a run whose rank 1 is SIGKILLed resumes to the weights of
an uninterrupted run, one rank shards (and offloads) as one GPU would, and each rank holds what `flashdistill plan
--world-size 2` says. Each torchrun takes ~15-40 s on a 2-core CPU."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashdistill.distill.recipe import load_recipe, resume_fingerprint
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.runtime.sharded import read_full

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"
ITERATIONS = 10
FAST = ["roles.lora_rank=4", "dmd.batch_size=4", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
        "run.log_every=1", f"dmd.iterations={ITERATIONS}", f"run.checkpoint_every={ITERATIONS}", "dmd.lr=1e-3",
        "critic.lr=1e-3", "dmd.ema_decay=0.9"]
# Tolerance of 2 ranks against 1 (float32, reduction order differs): losses and gradient norms relative, weights
# absolute, after 10 AdamW steps at lr 1e-3 (measured: see docs/full-scale.md, "Scale: FSDP2").
RTOL_LOG, ATOL_WEIGHTS = 1e-4, 1e-5
FSDP = ["run.parallel=fsdp", "roles.gradient_checkpointing=true"]  # per-block checkpointing: memory, not math
# PYTHONFAULTHANDLER: a rank that aborts inside torch/gloo prints the Python stack it aborted in
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONFAULTHANDLER": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")


def _torchrun(args: list[str], ranks: int = 2, **kwargs):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *args]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _distill(sets: list[str], out: Path, *extra: str, ranks: int = 2):
    return _torchrun(["-m", "flashdistill", "distill", str(RECIPE), "--out", str(out), *extra, "--set", *sets],
                     ranks)


def _finish(proc) -> None:
    _, err = proc.communicate(timeout=600)
    # faulthandler's list of loaded extension modules would fill the message: leave it out
    err = "\n".join(line for line in err.splitlines() if not line.startswith("Extension modules:"))
    assert proc.returncode == 0, err[-3000:]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _plain_weights(run: Path) -> dict:
    return {r: load_file(str(run / "checkpoint" / f"{r}.safetensors")) for r in ("student", "ema", "critic")}


def _sharded_weights(run: Path) -> dict:
    return {r: read_full(run / "checkpoint", f"{r}/") for r in ("student", "ema", "critic")}


@pytest.fixture(scope="module")
def runs(qwen_world, tmp_path_factory):
    """mode -> (1-rank run, 2-rank fsdp run), both started at once per mode (the 1-rank one in this process)."""
    _, sets = qwen_world
    root = tmp_path_factory.mktemp("fsdp")
    out = {}
    for mode in ("full", "lora"):
        common = sets + FAST + [f"roles.mode={mode}"]
        two = _distill(common + FSDP, root / f"{mode}-two")
        train_distill(load_recipe(RECIPE, common), root / f"{mode}-one")
        _finish(two)
        out[mode] = (root / f"{mode}-one", root / f"{mode}-two")
    return out


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_sharded_ranks_follow_one_rank(runs, mode):
    one, two = runs[mode]
    a, b = _log(one), _log(two)
    assert len(a) == len(b) == ITERATIONS and [r["k"] for r in a] == [r["k"] for r in b]
    assert sum(r["skipped"] for r in b) == 0
    for key in ("loss", "loss_critic", "grad_norm", "grad_norm_critic"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=RTOL_LOG), key
    wa, wb = _plain_weights(one), _sharded_weights(two)
    for role in wa:
        assert set(wa[role]) == set(wb[role]), role
        for key in wa[role]:
            torch.testing.assert_close(wb[role][key], wa[role][key], atol=ATOL_WEIGHTS, rtol=0, msg=f"{role}:{key}")
    assert json.loads((two / "checkpoint" / "state.json").read_text())["sharded"] == 2
    # the EMA lags the trained student: the comparison is not between untouched copies
    assert max((wb["student"][k] - wb["ema"][k]).abs().max().item() for k in wb["student"]) > 0


def test_gathered_export_loads_into_diffusers(runs, tmp_path):
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    from flashdistill.models.qwen_tiny import write_tiny_folder

    one, two = runs["full"]
    merged = {name: p.detach() for name, p in
              QwenImageTransformer2DModel.from_pretrained(two / "student" / "transformer").named_parameters()}
    ema = _sharded_weights(two)["ema"]
    assert set(merged) == {k.removeprefix("transformer.") for k in ema}
    for name, value in merged.items():
        assert torch.equal(value, ema["transformer." + name]), name  # the gathered EMA, bit for bit
    reference = load_file(str(one / "student" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for name, value in merged.items():
        torch.testing.assert_close(value, reference[name], atol=ATOL_WEIGHTS, rtol=0)
    one, two = runs["lora"]
    t2i = write_tiny_folder(tmp_path / "t2i", "t2i")  # seed 0: the base's transformer
    pipe = QwenImagePipeline.from_pretrained(t2i)
    pipe.load_lora_weights(two / "student")  # diffusers' own LoRA loader
    assert pipe.get_list_adapters() == {"transformer": ["default_0"]}
    lora_two = load_file(str(two / "student" / "pytorch_lora_weights.safetensors"))
    lora_one = load_file(str(one / "student" / "pytorch_lora_weights.safetensors"))
    assert set(lora_two) == set(lora_one) and any(v.abs().max() > 0 for k, v in lora_two.items() if "lora_B" in k)
    for key in lora_one:
        torch.testing.assert_close(lora_two[key], lora_one[key], atol=ATOL_WEIGHTS, rtol=0)


def _worker(agent: int, rank: int) -> int:
    """The pid of torchrun's worker with RANK=`rank` (a child of the agent process `agent`)."""
    children = Path(f"/proc/{agent}/task/{agent}/children").read_text().split()
    for pid in children:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} among {children}")


def test_sigkill_of_one_rank_then_resume_matches_uninterrupted(qwen_world, runs, tmp_path):
    _, sets = qwen_world
    sets = sets + FAST + FSDP + ["roles.mode=full", "run.checkpoint_every=1"]
    out = tmp_path / "killed"
    proc = _distill(sets, out)
    state, deadline = out / "checkpoint" / "state.json", time.time() + 300
    while not (state.exists() and json.loads(state.read_text())["step"] >= 3):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint at iteration 3 within 300 s"
        time.sleep(0.05)
    os.kill(_worker(proc.pid, 1), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun stops the surviving rank and fails
    killed_at = json.loads(state.read_text())["step"]
    assert 3 <= killed_at < ITERATIONS
    _finish(_distill(sets, out, "--resume"))
    a, b = _sharded_weights(runs["full"][1]), _sharded_weights(out)
    for role in a:
        for key in a[role]:
            torch.testing.assert_close(b[role][key], a[role][key], atol=1e-6, rtol=0, msg=f"{role}:{key}")
    assert len(_log(out)) == ITERATIONS  # the log continues from the checkpoint's iteration


def test_one_rank_shards_offloads_checkpoints_and_resumes(qwen_world, runs, tmp_path):
    """`torchrun --nproc_per_node=1` with run.parallel fsdp and run.fsdp_offload (what one GPU runs): FSDP2 on one
    rank, a sharded checkpoint at iteration 2, a resume to 4 and the gathered export; its losses are the plain
    1-rank run's (roles.mode lora)."""
    _, sets = qwen_world
    sets = sets + FAST + FSDP + ["roles.mode=lora", "run.fsdp_offload=true", "run.checkpoint_every=2"]
    out = tmp_path / "one-rank"
    _finish(_distill(sets + ["dmd.iterations=2"], out, ranks=1))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["sharded"] == 1 and state["step"] == 2
    _finish(_distill(sets + ["dmd.iterations=4"], out, "--resume", ranks=1))
    a, b = _log(runs["lora"][0])[:4], _log(out)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for key in ("loss", "loss_critic", "grad_norm", "grad_norm_critic"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=RTOL_LOG), key
    assert (out / "student" / "pytorch_lora_weights.safetensors").is_file()


def test_embedded_world_shards_too(teachers, tmp_path):
    """The embedded family's tiny MMDiT under fsdp follows its 1-rank run (distill_tiny, 4 iterations)."""
    sets = [f"teachers.base={teachers / 'base'}", f"teachers.specialized={teachers / 'spec'}",
            f"run.text_cache={tmp_path / 'text-cache'}", "dmd.iterations=4", "run.checkpoint_every=4", "eval.every=0"]
    tiny = str(ROOT / "configs" / "distill_tiny.yaml")
    one = subprocess.run([sys.executable, "-m", "flashdistill", "distill", tiny, "--out", str(tmp_path / "one"),
                          "--set", *sets], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    _finish(_torchrun(["-m", "flashdistill", "distill", tiny, "--out", str(tmp_path / "two"), "--set", *sets,
                       "run.parallel=fsdp"]))
    a, b = _log(tmp_path / "one"), _log(tmp_path / "two")
    for key in ("loss", "loss_critic", "grad_norm", "grad_norm_critic"):
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=RTOL_LOG), key
    wa, wb = _plain_weights(tmp_path / "one"), _sharded_weights(tmp_path / "two")
    for role in wa:
        for key in wa[role]:
            torch.testing.assert_close(wb[role][key], wa[role][key], atol=ATOL_WEIGHTS, rtol=0, msg=f"{role}:{key}")


def test_parallel_key_is_validated(qwen_world):
    _, sets = qwen_world
    with pytest.raises(UserError, match=r"run\.parallel: must be ddp or fsdp, got 'zero3'"):
        load_recipe(RECIPE, sets + ["run.parallel=zero3"])
    with pytest.raises(UserError, match=r"run\.fsdp_offload: needs run\.parallel: fsdp"):
        load_recipe(RECIPE, sets + ["run.fsdp_offload=true"])
    # checkpoints from before run.parallel existed (DDP layout) still resume; an fsdp one records its layout
    assert "parallel" not in resume_fingerprint(load_recipe(RECIPE, sets))["run"]
    assert resume_fingerprint(load_recipe(RECIPE, sets + ["run.parallel=fsdp"]))["run"]["parallel"] == "fsdp"
    with pytest.raises(UserError, match=r"eval\.every: the world's quick evaluation runs on rank 0 alone"):
        load_recipe(ROOT / "configs" / "distill_tiny.yaml", ["run.parallel=fsdp", "eval.every=5"])


def test_each_rank_holds_what_plan_world_size_2_says(tmp_path):
    """benchmarks/fsdp_memory.py under 2 ranks: per rank, weights, gradients, AdamW moments and EMA (bytes at the
    planner's precision) within 10% of `plan --world-size 2`; the weights' shards exactly half of every role.
    Gradients and moments come in under the plan: parameters that get no gradient (the last block's text stream)
    get no AdamW state either."""
    out = tmp_path / "memory.json"
    proc = _torchrun([str(ROOT / "benchmarks" / "fsdp_memory.py"), "--out", str(out)])
    _finish(proc)
    report = json.loads(out.read_text())
    assert report["world_size"] == 2 and len(report["ranks"]) == 2
    for rank in report["ranks"]:
        assert set(rank) == {"full", "lora", "lora, critic.lora false"}
        for mode, res in rank.items():
            assert 0.9 <= res["total_ratio"] <= 1.1, (mode, res["total_ratio"])
            for group in ("frozen", "trainable", "ema"):
                assert res["groups"][group]["elements"] == res["groups"][group]["planned_elements"], (mode, group)
            assert 0 < res["groups"]["grads"]["elements"] <= res["groups"]["grads"]["planned_elements"]


def test_adapters_outside_the_blocks_are_refused_under_fsdp(qwen_world, tmp_path):
    """Adapters on root modules (proj_out here) made the sharded run drift from the unsharded one: under fsdp such
    roles.lora_targets are refused with one line naming them (exit code 2), before any training."""
    _, sets = qwen_world
    proc = _distill(sets + FAST + FSDP + ["roles.mode=lora", "roles.lora_targets=[to_q,img_mod.1,proj_out]"],
                    tmp_path / "run", ranks=1)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode != 0 and "exitcode: 2" in err, err[-2000:]  # the rank's exit code; torchrun's is 1
    assert "roles.lora_targets: proj_out lie outside the transformer blocks" in err, err[-2000:]
    assert not (tmp_path / "run" / "checkpoint").exists()
