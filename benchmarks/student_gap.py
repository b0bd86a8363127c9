"""How close does a distilled student come to its teacher? Distil recipe arms over training seeds, bench each on the
full mini benches and on fresh held-out bench cases, and put every student beside teacher:base at 1, K and 50 NFE.

    python benchmarks/student_gap.py --out-dir runs/gap --arms flash --seeds 0 1 --json benchmarks/results/student_gap.json

An arm is a recipe plus overrides (ARMS below); each arm x seed is one `flashdistill distill ... --resume` (so an
interrupted script resumes where it stopped), its exported student benched at its own step count K. Cases:
- `full`: the shipped T2I-Bench-mini (600) and Editing-Bench-mini (300), world judge, with Fréchet distances;
- `fresh`: bench-split cases no shipped file holds (T2I indices 200-299 of each category, edit 50-99), made by the
  world's own bench generator as a new user would (`flashdistill bench make-cases --n ...`, then the new ids).
Per arm the JSON holds each seed's averages and per-category Fréchet distances, and over seeds: the share of
teacher@50, the gain over teacher@1 and teacher@K (paired over cases, `bench.stats.paired`), and the mean Fréchet
ratio to teacher@50 — the figures issue 36's targets are stated in. Each distillation runs in one thread
(`run.threads=1`), so two copies with disjoint --arms/--seeds share a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases, write_cases
from flashdistill.bench.stats import paired, scores

FRESH = {"t2i": (200, 300), "edit": (50, 100)}  # [first, last) bench indices per category no shipped file holds
ARMS = {  # name: (recipe, overrides)
    "flash": ("configs/flash.yaml", []),
    "flash4": ("configs/flash_4nfe.yaml", []),
    # the paired regression of issue 36 (a pairs cache built first: flashdistill pairs configs/flash.yaml --n 512
    # --nfe 16 --out runs/pairs16)
    "flash-pairs": ("configs/flash.yaml", ["pairs.folder=runs/pairs16", "pairs.weight=3"]),
}


def flashdistill(*args: str, log: Path) -> None:
    with log.open("a") as handle:
        done = subprocess.run([sys.executable, "-m", "flashdistill", *args], stdout=handle, stderr=handle)
    if done.returncode != 0:
        raise SystemExit(f"flashdistill {' '.join(args[:3])} failed (exit {done.returncode}); see {log}")


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


def bench(model: str, nfe: int, folder: Path, cases: dict[str, Path | None], log: Path) -> dict:
    """Both benches (shipped or `cases` files) at `nfe` into folder/<bench>; averages and Fréchet distances."""
    row = {}
    for name, case_file in cases.items():
        out = folder / name
        if not (out / "results.json").is_file():
            extra = ["--cases", str(case_file)] if case_file else []
            flashdistill("bench", name, "--model", model, "--nfe", str(nfe), *extra, "--out", str(out), log=log)
        result = json.loads((out / "results.json").read_text())
        row[name] = {"average": result["average"], "frechet": result.get("frechet_distance") or {},
                     "folder": str(out)}
    return row


def teacher_rows(out: Path, nfes: list[int], sets: dict) -> dict:
    rows = {}
    for nfe in nfes:
        rows[nfe] = {name: bench("teacher:base", nfe, out / "teacher" / f"nfe{nfe}" / name, cases, out / "teacher.log")
                     for name, cases in sets.items()}
    return rows


def summarise(seeds: dict, teacher: dict, k: int) -> dict:
    """Over seeds, per case set and bench: mean score, share of teacher@50, paired gains over teacher@1 / @K, mean
    Fréchet ratio to teacher@50."""
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
            if t50 and t50["frechet"] and all(r["frechet"] for r in rows):
                ratios = [statistics.mean(r["frechet"][c] / t50["frechet"][c] for c in t50["frechet"]) for r in rows]
                entry["frechet_ratio_to_teacher50"] = [round(x, 3) for x in ratios]
            out[f"{case_set}/{b}"] = entry
    return out


def _paired(a: dict, b: dict) -> dict:
    p = paired(scores(Path(a["folder"])), scores(Path(b["folder"])))
    return {k: round(p[k], 4) if isinstance(p[k], float) else p[k] for k in ("mean_diff", "stderr", "n")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--arms", nargs="+", default=["flash"], choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--sets", nargs="+", default=["full", "fresh"], choices=["full", "fresh"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--teacher-nfes", nargs="+", type=int, default=[1, 50],
                        help="teacher:base rows besides the student's K (50 on the full benches: ~45 min on 2 cores)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    fresh = fresh_cases(out)
    sets = {"full": {"t2i": None, "edit": None}, "fresh": dict(fresh)}
    sets = {name: sets[name] for name in args.sets}
    table = {"arms": {}}
    for arm in args.arms:
        recipe, overrides = ARMS[arm]
        runs = {}
        for seed in args.seeds:
            run, log = out / f"{arm}-seed{seed}", out / f"{arm}-seed{seed}.log"
            resume = ["--resume"] if (run / "checkpoint").is_dir() else []
            flashdistill("distill", recipe, "--out", str(run), *resume, "--set", *overrides, f"dmd.seed={seed}",
                         f"run.threads={args.threads}", f"run.text_cache={out / 'text-cache'}", log=log)
            k = len(json.loads((run / "student" / "student.json").read_text())["timesteps"])
            runs[seed] = {name: bench(str(run / "student"), k, run / "bench" / name, cases, log)
                          for name, cases in sets.items()}
        teacher = teacher_rows(out, sorted({k, *args.teacher_nfes}), sets)
        table["teacher:base"] = teacher
        table["arms"][arm] = {"recipe": recipe, "overrides": overrides, "k": k, "seeds": runs,
                              "summary": summarise(runs, teacher, k)}
        print(arm, json.dumps(table["arms"][arm]["summary"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
