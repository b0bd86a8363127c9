"""The quickstart report: `DIR/report.md` and the same content as `DIR/report.html`, one self-contained file.

Built only from what the quickstart's stages wrote (bench folders, speed.json, the distillation run's log and
export, quickstart.json), so rebuilding it changes no number. Sections: a summary, the tables in the paper's layout
with ranks (`flashdistill.bench.table`), side-by-side grids on the same prompts and seeds, speed (measured and ideal
ratios), the distillation run (time per iteration split into its parts), the recipe, and the command behind every
number. The HTML is rendered from the Markdown by Python-Markdown, with the PNGs inlined as data URIs.
"""

from __future__ import annotations

import base64
import json
import re
import statistics
from pathlib import Path

import yaml

from flashdistill.bench.cases import load_cases
from flashdistill.bench.table import markdown as table_markdown
from flashdistill.bench.table import rank_rows
from flashdistill.imageio import load_png, save_grid
from flashdistill.quickstart.speed import ITERATION_PARTS
from flashdistill.world.categories import EDIT_CATEGORIES, EDIT_TITLES, T2I_CATEGORIES
from flashdistill.world.edits import source_image, target_image


def _cases(bench: str, limit: int):
    from flashdistill.bench.cases import BUILTIN_CASES

    return load_cases(BUILTIN_CASES[bench], bench, limit)


def _judged(folder: Path) -> dict[str, dict]:
    lines = (folder / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def _score(judged: dict, case_id: str) -> str:
    score = judged[case_id]["score"]
    return "failed" if score is None else f"{score:.2f}"


def t2i_grid(out: Path, preset, rows, k: int) -> list[str]:
    """teacher@50 | teacher@K | student@K on the same prompts and seeds; returns the prompts, row by row."""
    cols = [r for r in rows if r.label in (f"teacher@{preset.teacher_nfe}", f"teacher@{k}", f"student@{k}")]
    judged = {r.label: _judged(out / "bench" / r.folder("t2i")) for r in cols}
    picked = [c for cat in T2I_CATEGORIES
              for c in [c for c in _cases("t2i", preset.t2i_limit) if c.category == cat][:preset.grid_t2i_rows]]
    images = [[load_png(out / "bench" / r.folder("t2i") / "images" / f"{c.id}.png") for r in cols] for c in picked]
    scores = [[_score(judged[r.label], c.id) for r in cols] for c in picked]
    save_grid(out / "grids" / "t2i.png", images, scale=4, row_labels=[c.id for c in picked], cell_labels=scores,
              label_width=110, col_labels=[r.label for r in cols])
    return [f"`{c.id}` (seed {c.seed}): {c.prompt}" for c in picked]


def edit_grid(out: Path, preset, rows, k: int) -> list[str]:
    """source | teacher@50 | teacher@K | student@K | exact target, one row per edit category."""
    cols = [r for r in rows if r.label in (f"teacher@{preset.teacher_nfe}", f"teacher@{k}", f"student@{k}")]
    judged = {r.label: _judged(out / "bench" / r.folder("edit")) for r in cols}
    cases = _cases("edit", preset.edit_limit)
    picked = [next(c for c in cases if c.category == cat) for cat in EDIT_CATEGORIES]
    images, scores = [], []
    for c in picked:
        outputs = [load_png(out / "bench" / r.folder("edit") / "images" / f"{c.id}.png") for r in cols]
        res = outputs[0].shape[0]  # the model's resolution
        images.append([source_image(c.source, c.edit, res), *outputs, target_image(c.source, c.edit, res)])
        scores.append(["", *(_score(judged[r.label], c.id) for r in cols), ""])
    save_grid(out / "grids" / "edit.png", images, scale=4, row_labels=[c.category.replace("_", "\n") for c in picked],
              cell_labels=scores, label_width=110,
              col_labels=["source", *(r.label for r in cols), "exact target"])
    return [f"{EDIT_TITLES[c.category]} — `{c.id}` (seed {c.seed}): {c.instruction}" for c in picked]


def _bench_command(bench: str, row, limit: int, out: Path) -> str:
    return (f"flashdistill bench {bench} --model {row.spec} --nfe {row.nfe} --limit {limit} "
            f"--out {out / 'repro' / row.folder(bench)}")


def _results(out: Path, rows, bench: str) -> list[dict]:
    found = []
    for r in rows:
        res = json.loads((out / "bench" / r.folder(bench) / "results.json").read_text())
        found.append({**res, "model": r.label})
    return found


def summary_lines(ranked: list[dict], speed: dict, preset, k: int) -> list[str]:
    avg = {(r["bench"], r["model"]): r["average"] for r in ranked}
    tn, few, stu = f"teacher@{preset.teacher_nfe}", f"teacher@{k}", f"student@{k}"
    lines = []
    for bench, name in (("t2i", "T2I"), ("edit", "Editing")):
        s, t, t4 = avg[(bench, stu)], avg[(bench, tn)], avg[(bench, few)]
        lines.append(f"- **{name}**: {stu} averages **{s:.2f}**, {tn} {t:.2f}, {few} {t4:.2f}: the student "
                     f"reaches {100 * s / t:.0f}% of {tn} and is {s - t4:+.2f} against {few}.")
    for ratio in speed["ratios"]:
        lines.append(f"- **Speed at batch {ratio['batch']}**: {stu} makes images {ratio['measured_speedup']:.1f}x "
                     f"as fast as {tn} with CFG (ideal {ratio['ideal_speedup']:.0f}x: {ratio['reference_passes']} "
                     f"network passes per image against {ratio['student_passes']}).{noise_note(ratio)}")
    return lines


def noise_note(ratio: dict) -> str:
    """A measured speed-up above the ideal cannot come from the work done: say it is noise."""
    if ratio["measured_speedup"] <= ratio["ideal_speedup"]:
        return ""
    return (" Above the ideal, which counts the work: the excess is noise of the machine's load during the timed "
            "calls, not a real gain.")


def speed_section(speed: dict, out: Path) -> list[str]:
    lines = ["| Sampler | NFE | Network passes / image | Batch | Seconds / batch | Images / s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in speed["rows"]:
        lines.append(f"| {r['label']} | {r['nfe']} | {r['passes']} | {r['batch']} | {r['seconds_per_batch']:.3f} | "
                     f"{r['images_per_s']:.2f} |")
    lines += ["", "| Batch | Measured speed-up | Ideal (passes) | Teacher's cost per image-pass, relative to the "
                  "student's |",
              "|---:|---:|---:|---:|"]
    for r in speed["ratios"]:
        above = " (above the ideal: noise)" if r["measured_speedup"] > r["ideal_speedup"] else ""
        lines.append(f"| {r['batch']} | {r['measured_speedup']:.1f}x{above} | {r['ideal_speedup']:.1f}x | "
                     f"{r['measured_speedup'] / r['ideal_speedup']:.2f} |")
    lines += ["", "The ideal counts network passes only. The last column is measured / ideal: above 1, a teacher pass "
                  "cost more per image than a student pass (with CFG the teacher's batch has twice the rows); below 1, "
                  "less (fixed per-call costs weigh more on the student's few passes)."]
    batches = " ".join(str(r["batch"]) for r in speed["ratios"])
    lines += ["", f"Median of {speed['repeats']} timed calls per sampler, in interleaved rounds (each round times "
                  f"every sampler once, so a change in the machine's load falls on all alike), after a 1-NFE "
                  f"warm-up call, in one process, on "
                  f"{speed['hardware']['cpus']} CPUs with {speed['hardware']['torch_threads']} torch threads; the "
                  f"teacher samples with CFG scale {speed['cfg_scale']:g}. Reproduce: "
                  f"`python benchmarks/speed.py --student {out / 'distill'} --batches {batches} "
                  f"--repeats {speed['repeats']} --out {out / 'repro' / 'speed.json'}`"]
    return lines


def nfe_section(out: Path, ranked: list[dict]) -> list[str]:
    """The teacher and the student at every NFE benched: the plot (`grids/nfe.png`) and its numbers."""
    from flashdistill.bench.curve import curve_table, nfe_points, plot_nfe_curve

    curves = nfe_points(ranked)
    plot_nfe_curve(curves, out / "grids" / "nfe.png")
    return ["Where distillation pays: the student's score against the number of network evaluations per image, "
            "beside its teacher's on the same cases (slices: too few cases per category for a Fréchet distance; "
            "`docs/results.md` has full-bench curves with them).", "",
            "![Quality against NFE: teacher and student, T2I and editing](grids/nfe.png)", "",
            *curve_table(curves), "",
            f"Redraw: `flashdistill bench curve {out / 'bench'}/* --out {out / 'grids' / 'nfe.png'}`"]


PART_TITLES = {"time_data": "Data", "time_student": "Student (simulation, loss, backward)",
               "time_teachers": "Teachers (real score, CFG)", "time_critic": "Critic (fake score, updates)",
               "step_time": "Whole iteration"}  # the columns of the distillation's split, by logged scalar


def distill_section(out: Path, command: str) -> list[str]:
    run = out / "distill"
    info = json.loads((run / "student" / "student.json").read_text())
    logs = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "time_student" in r]
    lines = [f"{info['iteration']} iterations at batch {info['recipe']['dmd']['batch_size']} in "
             f"{info['wall_time_s'] / 60:.1f} min ({info['wall_time_s'] / info['iteration']:.2f} s per iteration); "
             f"the student is the EMA of the generator (decay {info['ema_decay']}), exported to `{run / 'student'}` "
             f"in diffusers' layout.", ""]
    if steps:
        lines += ["Seconds per iteration, by part (median over the logged iterations):", "",
                  "| " + " | ".join(PART_TITLES.get(p, p) for p in ITERATION_PARTS) + " |",
                  "|" + "---:|" * len(ITERATION_PARTS),
                  "| " + " | ".join(f"{statistics.median(r.get(p, 0.0) for r in steps):.3f}"
                                   for p in ITERATION_PARTS) + " |", ""]
    return lines + [f"Reproduce: `{command}`"]


def write_report(out: Path, preset, recipe, overrides: list[str], state: dict, rows: list,
                 recipe_file: Path) -> Path:
    """`rows`: the benchmarked configurations (plan.bench_rows), `recipe_file`: the preset's recipe as the
    commands name it (plan.recipe_path)."""
    from flashdistill.bench.cases import MINI_SIZES

    ranked = rank_rows(_results(out, rows, "t2i") + _results(out, rows, "edit"))
    speed = json.loads((out / "speed.json").read_text())
    k = recipe.student.nfe
    prompts, instructions = t2i_grid(out, preset, rows, k), edit_grid(out, preset, rows, k)
    distill_cmd = f"flashdistill distill {recipe_file} --out {out / 'distill'}" + \
        (" --set " + " ".join(overrides) if overrides else "")
    limits = {"t2i": preset.t2i_limit, "edit": preset.edit_limit}
    seconds = state.get("seconds", {})
    md = [
        "# flashdistill quickstart report", "",
        f"The teachers ({', '.join(f'`{n}`: {s}' for n, s in recipe.teachers.items())}) distilled into a "
        f"{k}-NFE student that does text-to-image and editing, with DMD, {'step-wise ' if k > 1 else ''}"
        f"multi-teacher guidance and a T2I:Edit {recipe.tasks.ratio} task mixture, then judged by the world judge "
        f"against its teacher. Preset `{preset.name}`; stages took " +
        ", ".join(f"{stage} {secs / 60:.1f} min" for stage, secs in seconds.items()) + ".", "",
        *summary_lines(ranked, speed, preset, k), "",
        "## Scores", "",
        f"World judge (1-5), slices of the mini benches: the first {preset.t2i_limit} cases of each T2I-Bench-mini "
        f"category and the first {preset.edit_limit} of each Editing-Bench-mini category (the full benches are "
        f"{MINI_SIZES['t2i']} and {MINI_SIZES['edit']} per category; `docs/results.md` has full-bench rows). Rank is "
        f"within each bench.", "",
        table_markdown(ranked),
        "Reproduce a row (the images are seeded per case, so the numbers come out the same):", "",
        *[f"- {r.label}, {bench}: `{_bench_command(bench, r, limits[bench], out)}`" for bench in ("t2i", "edit")
          for r in rows], "",
        "## Quality against NFE", "",
        *nfe_section(out, ranked), "",
        "## Side by side", "",
        "Text-to-image, same prompt and seed in each row; the world judge's score under each image.", "",
        f"![T2I: teacher@{preset.teacher_nfe} | teacher@{k} | student@{k}](grids/t2i.png)",
        "",
        *[f"- {p}" for p in prompts], "",
        "Editing, one row per category: the source, the outputs, and the world's exact target.", "",
        f"![Editing: source | teacher@{preset.teacher_nfe} | teacher@{k} | student@{k} | exact target](grids/edit.png)",
        "",
        *[f"- {p}" for p in instructions], "",
        "## Speed", "",
        *speed_section(speed, out), "",
        "## Distillation", "",
        *distill_section(out, distill_cmd), "",
        "## Recipe", "",
        f"`{recipe_file}`" + (f" with `--set {' '.join(overrides)}`" if overrides else "") +
        ", as resolved:", "",
        "```yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False, width=110).rstrip(), "```", "",
        f"Whole run: `flashdistill quickstart --out {out}`" + (f" --preset {preset.name}" if preset.name !=
                                                              "default" else "") + ".", "",
    ]
    text = "\n".join(md)
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(to_html(text, out), encoding="utf-8")
    return out / "report.md"


STYLE = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3}img{image-rendering:pixelated;max-width:100%}code{background:#f5f5f5;padding:0 .2rem}
pre{background:#f5f5f5;padding:.75rem;overflow-x:auto}"""


def to_html(text: str, folder: Path) -> str:
    """Markdown -> one HTML file; local PNGs become data URIs so the file stands alone."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "fenced_code"])

    def inline(match: re.Match) -> str:
        path = folder / match.group(1)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:image/png;base64,{data}"'

    body = re.sub(r'src="([^":]+\.png)"', inline, body)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>flashdistill quickstart report</title>"
            f"<style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
