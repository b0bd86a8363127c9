"""The quickstart's four stages (distill, bench, speed, report) and the command that runs them in order into DIR,
each once: `quickstart(out, preset, overrides)`. The package docstring (`flashdistill.quickstart`) says what each
stage writes and how a run resumes."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from flashdistill.files import read_json_object, write_json_atomic
from flashdistill.quickstart.plan import (
    PRESETS,
    STATE_FILE,
    QuickstartPreset,
    State,
    bench_rows,
    load_quickstart_recipe,
    recipe_path,
)
from flashdistill.runfolder import claim_run
from flashdistill.runtime.presets import pick_preset

STAGES = ("distill", "bench", "speed", "report")


def stage_distill(out: Path, preset: QuickstartPreset, overrides: list[str], encoder) -> None:
    from flashdistill.bench.quick import make_scorer
    from flashdistill.distill.run_or_resume import train_or_resume

    recipe = load_quickstart_recipe(preset, overrides)
    run = out / "distill"
    command = f"flashdistill distill {recipe_path(preset)} --out {run}" + \
        (" --set " + " ".join(overrides) if overrides else "")
    train_or_resume(recipe, run, encoder, command, make_scorer)


def stage_bench(out: Path, preset: QuickstartPreset, overrides: list[str], encoder) -> None:
    from flashdistill.bench.quick import WorldSlice
    from flashdistill.pipeline import load_student_model, load_teacher

    recipe = load_quickstart_recipe(preset, overrides)
    teacher_spec = recipe.teachers[recipe.student.init_from]
    teacher = load_teacher(teacher_spec, encoder=encoder)
    student = load_student_model(out / "distill", name="student", encoder=encoder)
    bench_slice = WorldSlice({"t2i": preset.t2i_limit, "edit": preset.edit_limit}, teacher.resolution)
    for bench in ("t2i", "edit"):
        for row in bench_rows(preset, recipe.student.nfe, teacher_spec, out / "distill"):
            model = student if row.label.startswith("student") else teacher
            model.name = row.label
            bench_slice.run(bench, model, out / "bench" / row.folder(bench), row.nfe)


def stage_speed(out: Path, preset: QuickstartPreset, overrides: list[str], encoder) -> None:
    from flashdistill.pipeline import load_student_model, load_teacher
    from flashdistill.quickstart.speed import compare
    from flashdistill.runtime.logs import hardware

    recipe = load_quickstart_recipe(preset, overrides)
    batch = max(preset.speed_batches)
    teacher = load_teacher(recipe.teachers[recipe.student.init_from], encoder=encoder, batch_size=batch)
    student = load_student_model(out / "distill", encoder=encoder, batch_size=batch)
    few = recipe.student.nfe
    samplers = [(f"teacher@{preset.teacher_nfe}", teacher, preset.teacher_nfe), (f"teacher@{few}", teacher, few),
                (f"student@{few}", student, few)]
    result = compare(samplers, list(preset.speed_batches), preset.speed_repeats,
                     reference=f"teacher@{preset.teacher_nfe}", student=f"student@{few}")
    result["cfg_scale"] = teacher.spec.cfg_scale
    result["hardware"] = hardware()
    write_json_atomic(out / "speed.json", result)


def stage_report(out: Path, preset: QuickstartPreset, overrides: list[str], encoder) -> None:
    from flashdistill.quickstart.report import write_report

    recipe = load_quickstart_recipe(preset, overrides)
    rows = bench_rows(preset, recipe.student.nfe, recipe.teachers[recipe.student.init_from], out / "distill")
    write_report(out, preset, recipe, overrides, read_json_object(out / STATE_FILE, "quickstart record"), rows,
                 recipe_path(preset))


RUNNERS = {"distill": stage_distill, "bench": stage_bench, "speed": stage_speed, "report": stage_report}
DESCRIPTIONS = {
    "distill": "distil the teachers into a {few}-NFE student (DMD, multi-teacher guidance, T2I:Edit {ratio})",
    "bench": "benchmark the teacher and the student at several NFE on both mini bench slices (world judge)",
    "speed": "measure images per second of teacher@{tn}, teacher@{few} and student@{few}",
    "report": "write report.md and report.html",
}


def quickstart(out: Path, preset_name: str = "default", overrides: list[str] | None = None) -> Path:
    """Run (or continue) the quickstart into `out`; returns the report's path."""
    preset, overrides = pick_preset(PRESETS, preset_name), list(overrides or [])
    recipe = load_quickstart_recipe(preset, overrides)  # a bad override fails here, before anything is written
    out = Path(out)
    with claim_run(out, "quickstart"):  # another kind of run there, or another process writing it: refused
        return _run_stages(out, preset, overrides, recipe)


def _run_stages(out: Path, preset: QuickstartPreset, overrides: list[str], recipe) -> Path:
    state = State(out, {"preset": asdict(preset), "overrides": overrides})
    report = out / "report.md"
    if all(state.done(s) for s in STAGES):
        print(f"nothing left to do: this quickstart finished earlier. Report: {report} "
              f"(and {report.with_suffix('.html')})")
        return report
    from flashdistill.models.text import TextEncoder

    encoder = TextEncoder()
    for i, stage in enumerate(STAGES, 1):
        if state.done(stage):
            print(f"[{i}/{len(STAGES)}] {stage}: done earlier, skipped")
            continue
        what = DESCRIPTIONS[stage].format(few=recipe.student.nfe, tn=preset.teacher_nfe, ratio=recipe.tasks.ratio)
        print(f"[{i}/{len(STAGES)}] {stage}: {what}", flush=True)
        start = time.perf_counter()
        try:
            RUNNERS[stage](out, preset, overrides, encoder)
        finally:
            state.add_seconds(stage, time.perf_counter() - start)
        state.finish(stage)
    total = sum(state.data["seconds"].values())
    print(f"done in {total / 60:.1f} min of work. Report: {report} and {report.with_suffix('.html')}")
    return report
