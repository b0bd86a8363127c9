"""A study's report: `DIR/study.json`, `DIR/study.md` and `DIR/curves.png` from its finished runs.

- Table in the paper's layout per bench: each category and the average as mean ± 95% confidence interval over
  the training seeds (Student's t, n - 1 degrees of freedom), the rank of the means, the paper's averages beside.
- Findings: per training seed s the difference d_s = metric(a, seed s) - metric(b, seed s) (arms that share a
  seed share the trainer's random draws, so the pairs are common-random-number pairs), the interval of the d_s,
  and the verdict: confirmed when it excludes 0 on the paper's side, refuted when it excludes 0 on the other,
  inconclusive otherwise. Beside it the per-case paired difference of the seed-averaged scores (wins/ties/losses
  over the bench cases; it shows the bench slice's noise, not the training noise, and gives no verdict).
- Stability: the quick-eval score (val split) over iterations for every arm and seed; the drift of a curve is the
  mean of its second half minus the mean of its first half (an odd middle evaluation is left out); its drop is
  the last evaluation minus the best one (0 when it ends at its best, negative when it fell from a peak). A study
  may name pairs of arms whose drops are compared per seed (`Study.drop_pairs`), judged as the findings are.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from flashdistill.bench.stats import LEVEL, mean_ci, paired, verdict
from flashdistill.errors import UserError
from flashdistill.files import write_json_atomic, write_text_atomic
from flashdistill.studies.spec import JUDGES, PAPER, Finding, Study, StudyPreset, paper_value

DONE_FILE = "done.json"  # a run's summary, written by the runner once its training and bench are finished


def seed_dir(out: Path, arm: str, seed: int) -> Path:
    """The folder of arm × training seed in a study folder (the runner's layout)."""
    return out / "arms" / arm / f"seed{seed}"


BENCH_TITLES = {"t2i": "T2I-Bench-mini", "edit": "Editing-Bench-mini"}


def jsonl_records(path: Path) -> list:
    """The parsed lines of a JSONL file a run appends to; a blank line, or one torn by a kill mid-write, is
    skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def curve(run: Path, key: str) -> list[tuple[int, float]]:
    """(iteration, quick-eval `key`) of a distillation run's log.jsonl, in order, one per iteration (the last
    record wins when a resumed run evaluated the same iteration again)."""
    path = run / "log.jsonl"
    points: dict[int, float] = {}
    for row in jsonl_records(path) if path.is_file() else []:
        if isinstance(row, dict) and row.get("kind") == "eval" and isinstance(row.get(key), (int, float)):
            points[int(row["step"])] = float(row[key])
    return sorted(points.items())


def drift(points: list[tuple[int, float]]) -> float:
    """Mean of the second half of the curve minus the mean of its first half; nan with fewer than 2 points."""
    values = [v for _, v in points]
    half = len(values) // 2
    if half < 1:
        return float("nan")
    return statistics.fmean(values[-half:]) - statistics.fmean(values[:half])


def drop(points: list[tuple[int, float]]) -> float:
    """The last evaluation minus the best (highest) one: 0 when the curve ends at its best, negative when it fell
    from a peak; nan without points. On a noisy curve it is biased below 0 (the best of several noisy points is
    high by chance), so one arm's drop says little alone and arms are compared with each other (`drop_pairs`)."""
    values = [v for _, v in points]
    return float("nan") if not values else values[-1] - max(values)


def best_point(points: list[tuple[int, float]]) -> tuple[int, float] | None:
    """(iteration, score) of a curve's best evaluation (the first, on a tie)."""
    return max(points, key=lambda p: p[1]) if points else None


def judge_drop_pair(a: str, b: str, runs: dict) -> dict:
    """drop(a) - drop(b) per shared seed, its interval and verdict (+1: a falls less from its best than b): judged
    as a finding on the curves' `drop` column."""
    return judge_finding(Finding(f"drop:{a}-{b}", f"{a} falls less from its best than {b}", a, b, "curve", "drop"),
                         runs)


def collect(study: Study, out: Path, seeds: int, arms: list[str]) -> dict:
    """{arm: {seed: {"bench": {...}, "cases": {bench: {id: (category, score)}}, "curve": [...], "train": {...}}}}
    for every finished run (done.json present)."""
    runs: dict = {}
    for arm in arms:
        for seed in range(seeds):
            folder = seed_dir(out, arm, seed)
            if not (folder / DONE_FILE).is_file():
                continue
            done = _done_record(folder / DONE_FILE)
            cases = {b: _case_rows(folder / "bench" / b) for b in study.benches}
            runs.setdefault(arm, {})[seed] = {"bench": done["bench"], "cases": cases, "train": done["train"],
                                              "seconds": done["seconds"],
                                              "curve": curve(folder / "distill", study.curve)}
    return runs


def _done_record(path: Path) -> dict:
    """A run's done.json; a damaged one is named, with the way to run that seed again."""
    from flashdistill.files import read_json_object

    try:
        done = read_json_object(path, "finished-run record")
        if not all(isinstance(done.get(k), dict) for k in ("bench", "train", "seconds")):
            raise UserError(f"finished-run record {path}: lacks its bench, train or seconds")
    except UserError as err:
        raise UserError(f"{err}; delete it and run the study command again to redo that run") from None
    return done


def _case_rows(folder: Path) -> dict[str, tuple[str, float]]:
    rows = jsonl_records(folder / "cases.jsonl")  # the bench records every case it finished on its own line
    return {r["id"]: (r["category"], r["score"]) for r in rows
            if isinstance(r, dict) and r.get("score") is not None and "id" in r and "category" in r}


def metric(run: dict, bench: str, column: str) -> float:
    if bench == "curve":
        return drop(run["curve"]) if column == "drop" else drift(run["curve"])
    result = run["bench"][bench]
    value = result["average"] if column == "average" else result["per_category"].get(column)
    return float("nan") if value is None else float(value)


def case_means(seeds: dict, bench: str, column: str) -> dict[str, float]:
    """Per case, the score averaged over the arm's seeds (cases of `column`'s category, or all for the average)."""
    per_case: dict[str, list[float]] = {}
    for run in seeds.values():
        for cid, (category, score) in run["cases"][bench].items():
            if column in ("average", category):
                per_case.setdefault(cid, []).append(score)
    return {cid: statistics.fmean(v) for cid, v in per_case.items()}


def judge_finding(f: Finding, runs: dict) -> dict:
    """A finding's per-seed differences, their interval and verdict, the per-case paired difference and the
    paper's numbers."""
    a_runs, b_runs = runs.get(f.a, {}), runs.get(f.b, {}) if f.b else None
    seeds = sorted(a_runs) if b_runs is None else sorted(set(a_runs) & set(b_runs))
    diffs = [metric(a_runs[s], f.bench, f.column) - (0.0 if b_runs is None else metric(b_runs[s], f.bench, f.column))
             for s in seeds]
    interval = mean_ci(diffs, LEVEL)
    per_case = None
    if f.bench != "curve" and b_runs:
        try:
            per_case = paired(case_means(a_runs, f.bench, f.column), case_means(b_runs, f.bench, f.column))
        except UserError:  # fewer than 2 shared cases: no per-case comparison
            per_case = None
    paper = {}
    if f.bench != "curve":
        for judge in JUDGES:
            a, b = paper_value(f.a, f.bench, f.column, judge), paper_value(f.b, f.bench, f.column, judge)
            paper[judge] = None if a is None or b is None else {"a": a, "b": b, "diff": round(a - b, 2)}
    return {"key": f.key, "claim": f.claim, "a": f.a, "b": f.b, "bench": f.bench, "column": f.column,
            "direction": f.direction, "where": f.where, "per_seed": dict(zip(seeds, diffs)),
            "interval": interval.to_json(), "interval_text": interval.text(3),
            "verdict": verdict(interval, f.direction), "per_case": per_case, "paper": paper}


def arm_table(study: Study, runs: dict, arms: list[str], bench: str) -> list[dict]:
    rows = []
    for arm in arms:
        seeds = runs.get(arm, {})
        cells = {c: mean_ci([metric(r, bench, c) for r in seeds.values()]) for c in study.columns(bench)}
        rows.append({"arm": arm, "label": study.arm(arm).label, "seeds": sorted(seeds),
                     "cells": {c: i.to_json() for c, i in cells.items()},
                     "text": {c: i.text() for c, i in cells.items()},
                     "paper": {j: paper_value(arm, bench, "average", j) for j in JUDGES}})
    order = sorted((r for r in rows if r["cells"]["average"]["mean"] is not None),
                   key=lambda r: -r["cells"]["average"]["mean"])
    for rank, row in enumerate(order, 1):
        row["rank"] = rank
    return rows


def analyse(study: Study, runs: dict, arms: list[str]) -> dict:
    arm_set = set(arms)
    findings = [judge_finding(f, runs) for f in study.findings if f.a in arm_set and (f.b is None or f.b in arm_set)]
    drifts = {a: mean_ci([drift(r["curve"]) for r in runs.get(a, {}).values()]) for a in arms}
    best = {a: {s: {"best": best_point(r["curve"]), "last": (r["curve"] or [None])[-1], "drop": drop(r["curve"])}
                for s, r in runs.get(a, {}).items()} for a in arms}
    drops = {a: mean_ci([v["drop"] for v in best[a].values()]) for a in arms}
    return {"tables": {b: arm_table(study, runs, arms, b) for b in study.benches}, "findings": findings,
            "drift": {a: {**i.to_json(), "text": i.text(3)} for a, i in drifts.items()},
            "drop": {a: {**i.to_json(), "text": i.text(3), "per_seed": best[a]} for a, i in drops.items()},
            "drop_pairs": [judge_drop_pair(a, b, runs) for a, b in study.drop_pairs if {a, b} <= arm_set],
            "curves": {a: {s: r["curve"] for s, r in runs.get(a, {}).items()} for a in arms}}


def plot_curves(study: Study, curves: dict, path: Path) -> None:
    """One panel with every arm's seed-mean curve, then one panel per arm with a line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(curves)
    cols = min(3, len(arms) + 1)
    rows = math.ceil((len(arms) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), sharey=True, squeeze=False)
    panels = [ax for row in axes for ax in row]
    for ax in panels[len(arms) + 1:]:
        ax.set_visible(False)
    overview = panels[0]
    for i, arm in enumerate(arms):
        color = f"C{i}"
        ax = panels[i + 1]
        by_step: dict[int, list[float]] = {}
        for seed, points in sorted(curves[arm].items()):
            if points:
                ax.plot(*zip(*points), color=color, alpha=0.5, lw=1, marker=".", label=f"seed {seed}")
            for step, value in points:
                by_step.setdefault(step, []).append(value)
        if by_step:
            steps = sorted(by_step)
            means = [statistics.fmean(by_step[s]) for s in steps]
            ax.plot(steps, means, color=color, lw=2.2, label="mean")
            overview.plot(steps, means, color=color, lw=2, label=arm)
        ax.set_title(study.arm(arm).label, fontsize=8)
        ax.set_xlabel("iteration")
        ax.legend(fontsize=6)
    overview.set_title("seed means", fontsize=8)
    overview.set_xlabel("iteration")
    overview.set_ylabel(f"quick-eval {study.curve} (val)")
    overview.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.2f}"


def _paper_cell(paper: dict | None) -> str:
    return "—" if not paper else f"{paper['diff']:+.2f} ({paper['a']:.2f} vs {paper['b']:.2f})"


def _bench_section(study: Study, bench: str, rows: list[dict], seeds: int, own: dict | None = None) -> list[str]:
    cols = study.columns(bench)
    title, judge = (own["titles"][bench], own["judge"]) if own else (BENCH_TITLES[bench], "world judge")
    lines = [f"### {title}: ours ({judge}, mean ± 95% CI over {seeds} training seeds)", "",
             "| arm | " + " | ".join(cols) + " | rank | paper average (Gemini / GPT) |",
             "|---|" + "---:|" * (len(cols) + 2)]
    for r in rows:
        paper = " / ".join(_fmt(r["paper"][j]) for j in JUDGES) if r["paper"]["gemini"] is not None else "—"
        lines.append(f"| {r['label']} | " + " | ".join(r["text"][c] for c in cols) +
                     f" | {r.get('rank', '—')} | {paper} |")
    caption = study.paper_tables.get(bench)
    if caption:
        lines += ["", f"Paper, {caption}:", "", "| row | judge | " + " | ".join(cols) + " |",
                  "|---|---|" + "---:|" * len(cols)]
        paper_rows = [(study.arm(r["arm"]).label, PAPER[r["arm"]][bench]) for r in rows
                      if bench in PAPER.get(r["arm"], {})] + list(study.paper_extra.get(bench, {}).items())
        for label, row in paper_rows:
            for judge in JUDGES:
                lines.append(f"| {label} | {judge} | " + " | ".join(_fmt(v) for v in row[judge]) + " |")
    return lines + [""]


def _slice(bench: str, sizes: dict) -> str:
    return f"{sizes['t2i_limit']} T2I cases" if bench == "t2i" else f"{sizes['edit_limit']} edit cases"


def render_markdown(study: Study, result: dict) -> str:
    s, own = result["sizes"], result.get("own")
    setting = own["setting"] if own else (
        f"Preset `{result['preset']}`: {s['iterations']} iterations at batch {s['batch_size']} per run, quick "
        f"evaluation every {s['eval_every']} iterations on {s['eval_limit']} val cases per category, bench slice: "
        f"the first {' and '.join(_slice(b, s) for b in study.benches)} per category of the mini benches (world "
        f"judge).")
    lines = [f"# {study.title}", "", f"    {result['command']}", "",
             setting + " Seeds finished per arm: " + ", ".join(f"{a} {len(v)}" for a, v in result["curves"].items())
             + ".", "", "## Tables", ""]
    for bench in study.benches:
        lines += _bench_section(study, bench, result["tables"][bench], result["seeds"], own)
    lines += ["## Findings", "",
              "Ours: the difference a − b per training seed, mean ± 95% CI over seeds; verdict at 95%: confirmed "
              "when the interval excludes 0 on the paper's side, refuted when it excludes 0 on the other, "
              "inconclusive otherwise. Per case: the seed-averaged scores' paired difference over the bench cases "
              "(± 95% CI; wins/ties/losses).", "",
              "| finding | paper (where) | paper Gemini | paper GPT | ours over seeds | per case | verdict |",
              "|---|---|---:|---:|---:|---:|---|"]
    for f in result["findings"]:
        what = f"{f['a']} − {f['b']}" if f["b"] else f["a"]
        col = "drift of the curve" if f["bench"] == "curve" else f"{f['bench']} {f['column']}"
        pc = f["per_case"]
        per_case = "—" if not pc else (f"{pc['mean_diff']:+.3f} ± {pc['ci']:.3f} ({pc['wins']}/{pc['ties']}/"
                                       f"{pc['losses']})")
        sign = ">" if f["direction"] > 0 else "<"
        lines.append(f"| {f['claim']}: {what}, {col} {sign} 0 | {f['where']} | {_paper_cell(f['paper'].get('gemini'))}"
                     f" | {_paper_cell(f['paper'].get('gpt'))} | {f['interval_text']} | {per_case} | "
                     f"**{f['verdict']}** |")
    lines += ["", "## Stability over training", "", "![quick-eval curves](curves.png)", "",
              "Drift: the mean of the second half of the quick-eval curve minus the mean of its first half. Drop: "
              "the last evaluation minus the best one (≤ 0; biased below 0 by the curve's noise, so compare arms). "
              "Per seed: the best evaluation (iteration: score) → the last.", "",
              "| arm | drift, mean ± 95% CI | drop (last − best), mean ± 95% CI | per seed: best → last |",
              "|---|---:|---:|---|"]
    for a, d in result["drift"].items():
        drops = result["drop"][a]
        seeds = "; ".join(f"s{s}: {v['best'][0]}: {v['best'][1]:.2f} → {v['last'][1]:.2f}"
                          for s, v in drops["per_seed"].items() if v["best"] is not None)
        lines.append(f"| {study.arm(a).label} | {d['text']} | {drops['text']} | {seeds or '—'} |")
    if result["drop_pairs"]:
        lines += ["", "Drops compared per training seed (a − b > 0: a falls less from its best than b; verdict at "
                  "95% as for the findings):", "", "| a − b | per seed | mean ± 95% CI | verdict |",
                  "|---|---|---:|---|"]
        for p in result["drop_pairs"]:
            per_seed = ", ".join(f"{v:+.3f}" for v in p["per_seed"].values()) or "—"
            lines.append(f"| {study.arm(p['a']).label} − {study.arm(p['b']).label} | {per_seed} | "
                         f"{p['interval_text']} | **{p['verdict']}** |")
    return "\n".join(lines) + "\n"


def write_study_report(study: Study, out: Path, seeds: int, arms: list[str], preset: StudyPreset,
                       overrides: list[str], command: str | None = None, own: dict | None = None) -> Path:
    """Collect the finished runs and write study.json, study.md and curves.png; returns study.md's path. `own`: a
    study on the user's model (studies/own.py): its setting sentence, bench titles and judge, for the text."""

    out = Path(out)
    runs = collect(study, out, seeds, arms)
    result = {"study": study.name, "preset": preset.name, "seeds": seeds, "overrides": overrides, "own": own,
              "command": command or f"flashdistill study {study.name} --seeds {seeds} --preset {preset.name} "
                                    f"--out {out}",
              "sizes": preset.sizes(), "level": LEVEL,
              **analyse(study, runs, arms),
              "runs": {a: {s: {"bench": r["bench"], "train": r["train"], "seconds": r["seconds"]}
                           for s, r in v.items()} for a, v in runs.items()}}
    plot_curves(study, result["curves"], out / "curves.png")
    write_json_atomic(out / "study.json", result)
    return write_text_atomic(out / "study.md", render_markdown(study, result))
