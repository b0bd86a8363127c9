"""Teacher quality against CPU time, one curve per design: the figure that decides between teacher designs.

    python benchmarks/teacher_designs.py --designs p2 p4 p4-repa p4-repa-spell --minutes 15 --eval-every 5 \
        --out runs/designs --json benchmarks/results/teacher_designs.json [--finished FOLDER ...]

Each design is `configs/teacher_base.yaml` with its levers set (`DESIGNS` below: patch size, quoted words spelled
out to the text encoder, REPA weight); everything else is the base config's. It trains in chunks
(`train_teacher(..., stop_after=...)`, the run's own checkpoint and resume), and every `--eval-every` minutes of
CPU time (steps x the design's own seconds per step, measured for all designs in interleaved rounds before any
training, so that a busy machine slows all alike) its EMA weights are scored on the **val** split (never the bench) with the world judge: `--n`
T2I cases per category and `--n-edit` edit cases per category, 50 Euler steps, CFG `--cfg`. Besides the bench
averages a row records `word_exact`, the share of text-category T2I images whose word the reader reads exactly.

All designs share the learning-rate schedule of `--steps` total steps, so a short design run is the opening stretch
of the long run that `flashdistill teacher train configs/teacher_base.yaml --set ...` would make, and the winner
can simply be continued with `--resume`. The runs' own wall time is recorded too (`wall_minutes`); on this shared
2-core CPU other jobs inflate it. An interrupted sweep re-run with the same arguments continues where it stopped. `--finished` scores finished
teachers (a shipped one, a long run's export) on the same evaluation, at the wall time their teacher.json records.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from safetensors.torch import load_file

from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases
from flashdistill.bench.runner import run_bench
from flashdistill.bench.world_judge import WorldJudge
from flashdistill.data.batches import make_batch
from flashdistill.models.mmdit import FlowModel
from flashdistill.pipeline import FlowPipeline, SamplingSpec
from flashdistill.runtime.checkpoint import find_checkpoint, read_state
from flashdistill.teacher.config import load_config
from flashdistill.teacher.train import build_state, hardware, open_cache, train_step, train_teacher

BASE_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "teacher_base.yaml"
DESIGNS = {  # every lever set explicitly, so the designs stay what they are whatever the base config says
    "p2": ["model.patch_size=2", "model.spell_quoted=false", "repa.weight=0"],  # 2-px patches: 256 image tokens
    "p4": ["model.patch_size=4", "model.spell_quoted=false", "repa.weight=0"],  # 4-px patches: 64 image tokens
    "p4-repa": ["model.patch_size=4", "model.spell_quoted=false", "repa.weight=0.5"],
    "p4-spell": ["model.patch_size=4", "model.spell_quoted=true", "repa.weight=0"],
    "p4-repa-spell": ["model.patch_size=4", "model.spell_quoted=true", "repa.weight=0.5"],
}


def ema_model(run: Path, config) -> FlowModel:
    """The EMA weights of the run's latest checkpoint as a model."""
    model = FlowModel(config.model.mmdit())
    model.load_state_dict(load_file(str(find_checkpoint(run) / "ema.safetensors")))
    return model


def evaluate(model: FlowModel, out: Path, n: int, n_edit: int, cfg: float, judge) -> dict:
    pipe = FlowPipeline(model, SamplingSpec(cfg_scale=cfg), "design")
    row = {}
    for bench, cases in (("t2i", t2i_bench_cases(n, "val")), ("edit", edit_bench_cases(n_edit, "val"))):
        res = run_bench(bench, pipe, judge, cases, out / bench, None, f"val:{n}")
        row[bench], row[f"{bench}_per_category"] = res["average"], res["per_category"]
    texts = [json.loads(line) for line in (out / "t2i" / "cases.jsonl").read_text().splitlines() if line.strip()]
    texts = [c for c in texts if c["category"] == "text"]
    row["word_exact"] = round(sum(not any(m.startswith("wrong word") for m in c["failure_modes"])
                                  for c in texts) / max(1, len(texts)), 3)
    return row


def time_designs(names: list[str], args, rounds: int = 8) -> dict[str, float]:
    """Median seconds per training step (batch 32) of each design, timed in interleaved rounds (one step of each
    design per round, after two warm-up rounds) so that whatever else loads the machine hits all designs alike.
    The steps' prompts are encoded first, so the times are the model's, not MiniLM's on a cold cache."""
    setups = {}
    for name in names:
        config = load_config(BASE_CONFIG, DESIGNS[name] + [f"train.steps={args.steps}"])
        cache = open_cache(config, Path(args.out) / "timing", None, config.model.spell_quoted)
        tc = config.train
        for step in range(rounds + 2):
            cache.precompute(make_batch(step, tc.batch_size, config.mix, tc.seed, "train").texts + [""])
        setups[name] = (build_state(config), config, cache)
    times = {name: [] for name in names}
    for step in range(rounds + 2):
        for name, (state, config, cache) in setups.items():
            seconds = train_step(state, config, cache, step)["step_time"]
            if step >= 2:
                times[name].append(seconds)
    return {name: round(float(np.median(ts)), 4) for name, ts in times.items()}


def step_cost(name: str, args) -> float:
    """A design's seconds per step from `<out>/costs.json` (all requested designs are timed together on first use,
    or again with --retime)."""
    path = Path(args.out) / "costs.json"
    costs = json.loads(path.read_text()) if path.is_file() else {}
    if name not in costs or args.retime:
        costs.update(time_designs(args.designs, args))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(costs, indent=1) + "\n")
        args.retime = False
    return costs[name]


def run_design(name: str, args, judge) -> list[dict]:
    """Train the design to each evaluation mark (minutes of its own step cost) and score its EMA there."""
    overrides = DESIGNS[name] + [f"train.steps={args.steps}", "run.checkpoint_every=50"]
    config = load_config(BASE_CONFIG, overrides)
    cost = step_cost(name, args)
    run = Path(args.out) / name
    rows_path = run / "curve.jsonl"
    rows = [json.loads(x) for x in rows_path.read_text().splitlines()] if rows_path.is_file() else []
    marks = [args.eval_every * (i + 1) for i in range(int(round(args.minutes / args.eval_every)))]
    for mark in marks[len(rows):]:
        step = min(args.steps, int(round(mark * 60 / cost)))
        train_teacher(config, run, resume=True, stop_after=step)
        evaluated = run / f"eval-{step}"
        shutil.rmtree(evaluated, ignore_errors=True)
        wall = read_state(find_checkpoint(run))["meta"]["wall_time_s"] / 60
        row = {"design": name, "step": step, "cpu_minutes": round(step * cost / 60, 2),
               "wall_minutes": round(wall, 2), "s_per_step": cost,
               **evaluate(ema_model(run, config), evaluated, args.n, args.n_edit, args.cfg, judge)}
        print(f"{name} step {step} ({row['cpu_minutes']:.1f} CPU-min): T2I {row['t2i']:.3f}  "
              f"Edit {row['edit']:.3f}  word {row['word_exact']:.0%}", file=sys.stderr, flush=True)
        with rows_path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
    return rows


def evaluate_finished(folder: str, args, judge) -> dict:
    """A finished teacher (e.g. the shipped one) on the same evaluation, at the wall time its teacher.json records."""
    from flashdistill.models.shipped import teacher_folder

    path = teacher_folder(folder)
    info = json.loads((path / "teacher.json").read_text())
    out = Path(args.out) / "finished" / path.name
    shutil.rmtree(out, ignore_errors=True)
    row = {"teacher": folder, "step": info["steps"], "wall_minutes": round(info["wall_time_s"] / 60, 1),
           **evaluate(FlowModel.from_pretrained(path, torch_dtype=torch.float32), out, args.n, args.n_edit, args.cfg,
                      judge)}
    print(f"{folder} ({row['wall_minutes']} wall min): T2I {row['t2i']:.3f}  Edit {row['edit']:.3f}  "
          f"word {row['word_exact']:.0%}", file=sys.stderr, flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--minutes", type=float, default=15.0, help="training minutes per design")
    parser.add_argument("--eval-every", type=float, default=5.0, help="training minutes between evaluations")
    parser.add_argument("--steps", type=int, default=5000, help="length of the shared LR schedule")
    parser.add_argument("--n", type=int, default=10, help="val T2I cases per category")
    parser.add_argument("--n-edit", type=int, default=5, help="val edit cases per category")
    parser.add_argument("--cfg", type=float, default=3.0)
    parser.add_argument("--out", default="runs/designs")
    parser.add_argument("--retime", action="store_true", help="time the designs again (interleaved) first")
    parser.add_argument("--time-only", action="store_true", help="only time the designs, then stop")
    parser.add_argument("--finished", nargs="*", default=[], metavar="TEACHER",
                        help="finished teachers (teacher:NAME or folders) to score on the same evaluation")
    parser.add_argument("--json", default="benchmarks/results/teacher_designs.json")
    args = parser.parse_args()
    judge = WorldJudge()
    for name in args.designs:  # all timings first, interleaved
        print(f"{name}: {step_cost(name, args):.3f} s/step", file=sys.stderr, flush=True)
    if args.time_only:
        return 0
    curves = {name: run_design(name, args, judge) for name in args.designs}
    finished = [evaluate_finished(folder, args, judge) for folder in args.finished]
    costs = json.loads((Path(args.out) / "costs.json").read_text())
    for name, rows in curves.items():  # CPU minutes from the final timing, whatever the marks were set from
        for row in rows:
            row["s_per_step"], row["cpu_minutes"] = costs[name], round(row["step"] * costs[name] / 60, 2)
    result = {"what": "teacher quality (val split, world judge) against training wall minutes, per design",
              "command": " ".join(["python", "benchmarks/teacher_designs.py", *sys.argv[1:]]),
              "designs": {name: DESIGNS[name] for name in args.designs}, "base_config": "configs/teacher_base.yaml",
              "n_t2i_per_category": args.n, "n_edit_per_category": args.n_edit, "cfg": args.cfg, "nfe": 50,
              "schedule_steps": args.steps, "hardware": hardware(),
              "s_per_step": json.loads((Path(args.out) / "costs.json").read_text()),
              "note": "cpu_minutes = steps x the design's median s/step, all designs timed back to back at the start; "
                      "wall_minutes is the run's own wall time on a shared 2-core CPU (other jobs inflate it)",
              "curves": curves, "finished": finished}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
