"""benchmarks/gpu_fullsize.py at tiny size on the CPU, so the GPU benchmark cannot rot between GPU sessions: the
same recipe, family, roles and trainer iteration as at full size, with the tiny transformer config."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_runs_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "g.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_fullsize.py"), "--tiny", "--device", "cpu", "--out", str(out),
           "--iters", "2", "--memory", "2", "1", "0:1", "--resolution", "64", "--save", "--work", str(tmp_path)]
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["errors"] == [] and r["frozen_dtype"] == "torch.float32"  # auto: fp32 on a CPU
    adapters = r["phases"]["roles_built"]["adapters"]
    assert {a["dtypes"][0] for a in adapters.values()} == {"torch.float32"} and adapters["student"]["params"] > 0
    assert len(r["timing"]) == 2 and all(row["model_flop"] > 0 and row["skipped"] == 0 for row in r["timing"])
    case = r["memory"][0]
    assert (case["batch"], case["micro_batch"], case["ratio"]) == (2, 1, "0:1")
    assert case["iterations"][0]["edit_rows"] == 2
    assert case["planned_peak_gib"] >= 0 and r["timing_summary"]["planned_peak_gib"] >= 0
    assert r["phases"]["checkpoint_saved"]["gib"] >= 0
