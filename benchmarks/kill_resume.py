"""SIGKILL a run again and again, resume it each time, and check that nothing was lost or corrupted.

    python benchmarks/kill_resume.py --kills 10 --out benchmarks/results/kill_resume.json

Three kinds of run, each on tiny models (seconds per run on a CPU):
- `teacher`: `flashdistill teacher train configs/teacher_tiny.yaml` with a checkpoint every step;
- `distill`: `flashdistill distill configs/distill_tiny.yaml` (tiny random teachers) with a checkpoint every iteration;
- `bench`: `flashdistill bench t2i --model oracle-noise:0.1`.
Each is killed `--kills` times with SIGKILL at a random moment after it has made progress (a new log line or judged
case), then run to the end with `--resume` (the bench: the same command). After every kill the newest checkpoint
must read back completely (safetensors and state.json). At the end the resumed run must equal an uninterrupted one
bit for bit (teacher/distill: every weight, EMA and optimizer tensor of the last checkpoint; bench: the same case
ids and scores, no duplicates). The JSON holds, per kind: kills, corrupt checkpoints found, leftover temporary folders, and whether
the final state is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flashdistill", *args]


def commands(kind: str, out: Path, tmp: Path) -> list[str]:
    cache = f"run.text_cache={tmp / 'text-cache'}"
    if kind == "teacher":
        return _cmd("teacher", "train", str(ROOT / "configs" / "teacher_tiny.yaml"), "--out", str(out), "--set",
                    "train.steps=40", "run.checkpoint_every=1", cache)
    if kind == "distill":
        teacher = tmp / "teacher-tiny"
        return _cmd("distill", str(ROOT / "configs" / "distill_tiny.yaml"), "--out", str(out), "--set",
                    f"teachers.base={teacher}", f"teachers.specialized={teacher}", "dmd.iterations=24",
                    "run.checkpoint_every=1", cache)
    return _cmd("bench", "t2i", "--model", "oracle-noise:0.1", "--limit", "100", "--batch-size", "1", "--out",
                str(out))


def progress(kind: str, out: Path) -> int:
    """Lines of progress so far: log records (training) or judged cases (bench)."""
    path = out / ("cases.jsonl" if kind == "bench" else "log.jsonl")
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def checkpoint_problems(kind: str, out: Path) -> list[str]:
    """Every complete-looking checkpoint folder must read back in full."""
    from safetensors.torch import load_file

    problems = []
    for folder in (out / "checkpoint", out / "checkpoint.prev"):
        if kind == "bench" or not (folder / "state.json").is_file():
            continue
        try:
            json.loads((folder / "state.json").read_text())
            for path in folder.glob("*.safetensors"):
                load_file(str(path))
        except Exception as err:  # noqa: BLE001 - what this benchmark counts
            problems.append(f"{folder.name}: {type(err).__name__}: {err}"[:200])
    return problems


def run_killed(kind: str, out: Path, tmp: Path, kills: int, rng: random.Random) -> dict:
    resume = [] if kind == "bench" else ["--resume"]
    done, corrupt, attempts = 0, [], 0
    while done < kills and attempts < kills * 4:
        attempts += 1
        before = progress(kind, out)
        proc = subprocess.Popen(commands(kind, out, tmp) + resume, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        while proc.poll() is None and progress(kind, out) <= before:
            time.sleep(0.01)
        if proc.poll() is not None:  # finished before any progress: nothing left to kill
            break
        # anywhere in the next step (a bench case takes milliseconds): mid-write, mid-rename, mid-forward
        time.sleep(rng.uniform(0.0, 0.02 if kind == "bench" else 0.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done += 1
        corrupt += checkpoint_problems(kind, out)
    final = subprocess.run(commands(kind, out, tmp) + resume, env=ENV, capture_output=True, text=True)
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and "-tmp-" in p.name)
    return {"kills": done, "corrupt_checkpoints": len(corrupt), "corrupt": corrupt[:5],
            "final_exit_code": final.returncode, "leftover_tmp_folders": leftovers,
            "final_stderr_tail": final.stderr.strip().splitlines()[-1:] if final.returncode else []}


def differences(kind: str, a: Path, b: Path) -> list[str]:
    """What differs between the uninterrupted run `a` and the killed-and-resumed run `b` (empty: identical)."""
    if kind == "bench":
        rows = [[json.loads(line) for line in (p / "cases.jsonl").read_text().splitlines()] for p in (a, b)]
        key = [sorted((r["id"], r["score"]) for r in rs) for rs in rows]
        dup = len({r["id"] for r in rows[1]}) != len(rows[1])
        return (["case ids or scores"] if key[0] != key[1] else []) + (["duplicate case ids"] if dup else [])
    import torch
    from safetensors.torch import load_file

    diffs = []
    for path in sorted((a / "checkpoint").glob("*.safetensors")):  # weights, EMA, critic, optimizer states
        ta, tb = load_file(str(path)), load_file(str(b / "checkpoint" / path.name))
        # Not the global torch RNG state (`rng.*`): no draw of the runs uses it (every draw comes from a generator
        # seeded by (seed, step)), and a cold text cache loads the encoder mid-run in one run and not the other.
        diffs += [f"{path.name}:{k}" for k in sorted(set(ta) | set(tb)) if not k.startswith("rng.")
                  and (k not in ta or k not in tb or not torch.equal(ta[k], tb[k]))][:3]
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs per kind of run")
    parser.add_argument("--kinds", nargs="+", default=["teacher", "distill", "bench"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/kill_resume.json")
    args = parser.parse_args(argv)
    rng, results = random.Random(args.seed), {}
    with tempfile.TemporaryDirectory(prefix="fd-kill-") as tmp:
        tmp = Path(tmp)
        import torch

        from flashdistill.models.mmdit import FlowModel, MMDiTConfig

        torch.manual_seed(0)
        FlowModel(MMDiTConfig.tiny()).save_pretrained(tmp / "teacher-tiny")
        for kind in args.kinds:
            ref = subprocess.run(commands(kind, tmp / f"{kind}-ref", tmp), env=ENV, capture_output=True, text=True)
            assert ref.returncode == 0, ref.stderr
            row = run_killed(kind, tmp / f"{kind}-killed", tmp, args.kills, rng)
            row["differences"] = differences(kind, tmp / f"{kind}-ref", tmp / f"{kind}-killed")
            row["identical_to_uninterrupted"] = not row["differences"]
            results[kind] = row
            print(kind, json.dumps(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": f"python benchmarks/kill_resume.py --kills {args.kills}",
                               "results": results}, indent=1) + "\n")
    ok = all(r["corrupt_checkpoints"] == 0 and r["identical_to_uninterrupted"] and not r["leftover_tmp_folders"]
             and r["final_exit_code"] == 0 for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
