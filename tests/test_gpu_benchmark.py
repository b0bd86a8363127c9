"""benchmarks/gpu_fullsize.py at tiny size on the CPU, so the one prepared GPU script cannot rot between GPU sessions:
the same recipe, family, roles, trainer iteration, checkpoint/resume/export and torchrun phases as at full size, with
the tiny transformer config. The compiled phase restarts eager here (`--compile-backend none`: compiling every
role's block variants takes minutes on a CPU; tests/test_compile.py compiles them), which proves the restart from the
eager phase's checkpoint exact."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PHASES = ("eager_b1", "restarted_b1", "eager_b2_m1", "fsdp_b1", "fsdp_offload_b1")


def test_the_gpu_script_runs_every_phase_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "g.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_fullsize.py"), "--tiny", "--device", "cpu", "--out", str(out),
           "--resolution", "64", "--rank", "4", "--iters", "2", "--compile-iters", "1", "--compile-backend",
           "none", "--batch", "2", "--micro", "1", "--batch-iters", "1", "--fsdp-iters", "2", "--work",
           str(tmp_path), "--set", "run.threads=1"]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == [] and r["skipped"] == [] and r["failed_checks"] == [], (r["errors"], r["skipped"])
    assert r["frozen_dtype"] == "torch.float32" and set(PHASES) <= set(r["phases"])  # auto: fp32 on a CPU
    for name in PHASES:
        phase = r["phases"][name]
        assert phase["median_s"] > 0 and phase["model_tflops_per_s"] > 0 and phase["mfu_vs_989"] > 0, name
        assert phase["student_change"]["max_abs"] > 0 and phase["planned_peak_gib"] > 0, name
        assert all(row["dmd_grad_norm"] > 0 and row["skipped"] == 0 for row in phase["rows"]), name
    eager, compiled = r["phases"]["eager_b1"], r["phases"]["restarted_b1"]
    assert [row["step"] for row in compiled["rows"]] == [1, 2, 3] and len(eager["rows"]) == 2
    losses = [row["loss"] for row in eager["rows"]]
    assert all(0 < x and x != round(x, 3) for x in losses)  # full precision, not issue 23's 3 decimals
    # restarted from the eager phase's checkpoint (the trainer's resume), the same steps give the same numbers
    assert all(v == 0 for d in compiled["vs_eager_relative"] for v in d.values()), compiled["vs_eager_relative"]
    assert r["phases"]["eager_b2_m1"]["rows"][0]["edit_rows"] == 2
    offload = r["phases"]["fsdp_offload_b1"]
    assert offload["offload"] and offload["compile"] == "none" and offload["checkpoint"]["gib"] > 0
    assert offload["resume"]["from_iteration"] == 2 and all(v == 0 for v in offload["resume_relative"].values())
    assert "pytorch_lora_weights.safetensors" in offload["export"]["files"]
    assert offload["planned_peak_gib"] < r["phases"]["fsdp_b1"]["planned_peak_gib"]


def test_the_learning_checks_fail_a_phase_whose_student_did_not_learn():
    from fullsize_bench import learning

    rows = [{"step": 1, "dmd_grad_norm": 0.0, "skipped": 0}, {"step": 2, "dmd_grad_norm": float("nan"), "skipped": 1},
            {"step": 3, "dmd_grad_norm": 0.3, "skipped": 0}]
    failed = learning("eager_b1", rows, {"max_abs": 0.0, "rel_norm": 0.0})
    assert failed == ["eager_b1: step 1 has DMD gradient norm 0.0", "eager_b1: step 2 has DMD gradient norm nan",
                      "eager_b1: step 2 was skipped (non-finite loss or gradient)",
                      "eager_b1: the student adapter's weights did not change"]
    assert learning("eager_b1", rows[2:], {"max_abs": 1e-9, "rel_norm": 1e-6}) == []
