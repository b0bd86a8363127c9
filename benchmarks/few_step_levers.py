"""Which levers make a 1-NFE student? Distil the quickstart recipe at one step under each lever, bench it.

Every arm is the quickstart recipe (`src/flashdistill/assets/recipes/quickstart.yaml`, 150 iterations unless the arm
says otherwise) with `student.nfe=1`, one guidance row per category (text and text editing: 0.4 base + 0.6
specialized, the 4-step recipe's last row) and `dmd.first_step_fm=0`, plus the arm's overrides. (The quickstart
recipe has since become arm D: 1 NFE with first-step supervision 0.5. The overrides pin every arm as it ran.)
Each student is benched at 1 NFE on slices of both mini benches (the first 20 cases of each T2I category, 10 of
each edit category: 60 + 60 cases), world judge, with what each average is made of (the judge's sub-scores; on T2I
the distance to the nearest clean render); teacher:base is benched on the same slices at 1, 2, 4, 8 and 50 NFE,
and the quickstart's own 4-step student (given with --k4-student; arm Q-K4 is its recipe, the quickstart's before
it became 1-NFE) at 1, 2 and 4. An arm whose results exist in --out-dir is read back, not run again, so the script
resumes and a partial table can be printed at any time:

    python benchmarks/few_step_levers.py --out-dir runs/levers --k4-student runs/quickstart/distill \
        --json benchmarks/results/few_step_levers.json

Each distillation runs in one thread (`run.threads=1`), so two copies of the script with disjoint `--arms` share a
2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RECIPE = "src/flashdistill/assets/recipes/quickstart.yaml"
ONE_STEP = ["student.nfe=1", "guidance.text={base: 0.4, specialized: 0.6}",
            "guidance.text_editing={base: 0.4, specialized: 0.6}", "dmd.first_step_fm=0", "run.threads=1"]
TWO_STEP = ["student.nfe=2", "guidance.text=[{base: 1.0}, {base: 0.4, specialized: 0.6}]",
            "guidance.text_editing=[{base: 1.0}, {base: 0.4, specialized: 0.6}]", "dmd.first_step_fm=0",
            "run.threads=1"]
STEPWISE_4 = ("[{base: 1.0}, {base: 0.7, specialized: 0.3}, {base: 0.4, specialized: 0.6}, "
              "{base: 0.4, specialized: 0.6}]")
FOUR_STEP = ["student.nfe=4", f"guidance.text={STEPWISE_4}", f"guidance.text_editing={STEPWISE_4}",
             "dmd.first_step_fm=0", "run.threads=1"]
ARMS = {  # name: (recipe overrides, the NFEs to bench at)
    "A-base": (ONE_STEP, [1]),
    "B-lr5e-5": (ONE_STEP + ["dmd.lr=5e-5"], [1]),
    "G-lr1e-4": (ONE_STEP + ["dmd.lr=1e-4"], [1]),
    "H-600-lr5e-5-eval": (ONE_STEP + ["dmd.lr=5e-5", "dmd.iterations=600", "eval.every=100", "eval.limit=4"], [1]),
    "D-fm0.5": (ONE_STEP + ["dmd.first_step_fm=0.5"], [1]),
    "F-cfg2": (ONE_STEP + ["dmd.cfg_scale=2.0"], [1]),
    "E-critic2e-4": (ONE_STEP + ["critic.lr=2e-4"], [1]),
    "GAN-a": (ONE_STEP + ["gan.generator_weight=3e-3", "gan.critic_weight=1e-2"], [1]),
    "GAN-b": (ONE_STEP + ["gan.generator_weight=3e-2", "gan.critic_weight=1e-1"], [1]),
    "GAN-c": (ONE_STEP + ["gan.generator_weight=3e-2", "gan.critic_weight=1e-1", "gan.lr=1e-3"], [1]),
    "K-fm0.5-critic4": (ONE_STEP + ["dmd.first_step_fm=0.5", "critic.updates=4"], [1]),
    "L-fm0.5-critic4-gan": (ONE_STEP + ["dmd.first_step_fm=0.5", "critic.updates=4", "gan.generator_weight=3e-2",
                                        "gan.critic_weight=1e-1", "gan.lr=1e-3"], [1]),
    "M-fm0.5-tshift3": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.t_shift=3"], [1]),
    "N-fm0.5-lr5e-5-critic4-2e-4": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.lr=5e-5", "critic.updates=4",
                                                "critic.lr=2e-4"], [1]),
    "P-fm0.5-tshift0.33": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.t_shift=0.33"], [1]),
    "O-fm0.5-450": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.iterations=450"], [1]),
    "R-reg1-nfe4": (ONE_STEP + ["dmd.regression=1", "dmd.regression_nfe=4"], [1]),
    "S-reg1-nfe4-fm0.5": (ONE_STEP + ["dmd.regression=1", "dmd.regression_nfe=4", "dmd.first_step_fm=0.5"], [1]),
    "T-reg1-nfe4-lr1e-4": (ONE_STEP + ["dmd.regression=1", "dmd.regression_nfe=4", "dmd.lr=1e-4"], [1]),
    "U-reg4-nfe4-lr5e-5": (ONE_STEP + ["dmd.regression=4", "dmd.regression_nfe=4", "dmd.lr=5e-5"], [1]),
    "V-reg20-nfe4-lr1e-4": (ONE_STEP + ["dmd.regression=20", "dmd.regression_nfe=4", "dmd.lr=1e-4"], [1]),
    "W-reg4-nfe4-lr5e-5-1200": (ONE_STEP + ["dmd.regression=4", "dmd.regression_nfe=4", "dmd.lr=5e-5",
                                            "dmd.iterations=1200"], [1]),
    "X-fm0.5-tmax0.3": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.t_max=0.3"], [1]),
    "Y-fm0.5-ema0": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.ema_decay=0"], [1]),
    "A-base-seed1": (ONE_STEP + ["dmd.seed=1"], [1]),
    "D-fm0.5-seed1": (ONE_STEP + ["dmd.first_step_fm=0.5", "dmd.seed=1"], [1]),
    "W-seed1": (ONE_STEP + ["dmd.regression=4", "dmd.regression_nfe=4", "dmd.lr=5e-5", "dmd.iterations=1200",
                            "dmd.seed=1", "run.threads=2"], [1]),
    # issue 36: roles.mode lora (the full-scale layout) against full roles (D) at D's budget
    "LA-lora-lr1e-4": (ONE_STEP + ["dmd.first_step_fm=0.5", "roles.mode=lora", "dmd.lr=1e-4", "critic.lr=1e-4"], [1]),
    "LB-lora-lr3e-4": (ONE_STEP + ["dmd.first_step_fm=0.5", "roles.mode=lora", "dmd.lr=3e-4", "critic.lr=3e-4"], [1]),
    "LC-lora-lr3e-4-fullcritic": (ONE_STEP + ["dmd.first_step_fm=0.5", "roles.mode=lora", "dmd.lr=3e-4",
                                              "critic.lora=false"], [1]),
    "LD-lora-r16-a32-lr3e-4": (ONE_STEP + ["dmd.first_step_fm=0.5", "roles.mode=lora", "roles.lora_rank=16",
                                           "roles.lora_alpha=32", "dmd.lr=3e-4", "critic.lr=3e-4"], [1]),
    "LE-lora-lr1e-3": (ONE_STEP + ["dmd.first_step_fm=0.5", "roles.mode=lora", "dmd.lr=1e-3", "critic.lr=1e-3"], [1]),
    "J-K2": (TWO_STEP, [2, 1]),
    "Q-K4": (FOUR_STEP, [4, 2, 1]),
}
LIMITS = {"t2i": 20, "edit": 10}


def flashdistill(*args: str, log: Path) -> None:
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, "-m", "flashdistill", *args], stdout=handle, stderr=handle)
    if done.returncode != 0:
        raise SystemExit(f"flashdistill {' '.join(args[:2])} failed (exit {done.returncode}); see {log}")


def bench(model: str, nfe: int, folder: Path, log: Path) -> dict:
    """Both slices at `nfe` into folder/b-{t2i,edit}-{nfe} (run unless there already); the two averages."""
    row = {}
    for name, limit in LIMITS.items():
        out = folder / f"b-{name}-{nfe}"
        if not (out / "results.json").is_file():
            flashdistill("bench", name, "--model", model, "--nfe", str(nfe), "--limit", str(limit), "--out",
                         str(out), log=log)
        row[name] = json.loads((out / "results.json").read_text())["average"]
        row[f"{name}_parts"] = parts(out / "cases.jsonl")
    return row


def parts(cases: Path) -> dict:
    """What the average is made of: each judge sub-score's mean over the cases that have it, and on T2I the mean
    distance to the nearest clean render (`manifold_mae`, the technical-quality metric)."""
    rows = [json.loads(line) for line in cases.read_text().splitlines() if line.strip()]
    values: dict[str, list[float]] = {}
    for r in rows:
        for key, value in r.get("sub_scores", {}).items():
            values.setdefault(key, []).append(value)
        if "manifold_mae" in r.get("metrics", {}):
            values.setdefault("manifold_mae", []).append(r["metrics"]["manifold_mae"])
    return {key: round(sum(v) / len(v), 4) for key, v in values.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--k4-student", default=None, help="the quickstart's 4-step student run folder")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out, table = args.out_dir, {"teacher:base": {}, "arms": {}}
    out.mkdir(parents=True, exist_ok=True)
    for nfe in (1, 2, 4, 8, 50):
        table["teacher:base"][nfe] = bench("teacher:base", nfe, out / f"teacher-nfe{nfe}", out / "teacher.log")
    if args.k4_student:
        table["k4-student"] = {n: bench(args.k4_student, n, out / "qs4", out / "qs4.log") for n in (1, 2, 4)}
    for arm in args.arms:
        sets, nfes = ARMS[arm]
        run, log = out / arm, out / f"{arm}.log"
        if not all((run / f"b-{b}-{n}" / "results.json").is_file() for b in LIMITS for n in nfes):
            flashdistill("distill", RECIPE, "--out", str(run), "--resume", "--set", *sets,
                         f"run.text_cache={out / 'text-cache'}", log=log)
        table["arms"][arm] = {"overrides": sets[len(ONE_STEP):] if sets[:len(ONE_STEP)] == ONE_STEP else sets,
                              **{f"nfe{n}": bench(str(run), n, run, log) for n in nfes}}
        print(arm, table["arms"][arm], flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
