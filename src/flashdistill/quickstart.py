"""`flashdistill quickstart [--out DIR]`: the whole system in one resumable command, sized for a laptop CPU.

Four stages, each resumable, run in order into DIR (default `runs/quickstart`):

1. distill  the preset's recipe (`assets/recipes/quickstart.yaml`: guidance from teacher:base and
            teacher:specialized, first-step supervision, T2I:Edit 5:5) distils the shipped teachers into a student
            with the recipe's step count K (1: where this world's teacher breaks down), `DIR/distill/`;
2. bench    slices of T2I-Bench-mini and Editing-Bench-mini (the first cases of each category), world judge, for
            the base teacher at 50, 8, 4, 2 and 1 NFE and the student at K and at the powers of two below it:
            `DIR/bench/<bench>-<row>/` (the report plots quality against NFE from them);
3. speed    images per second of teacher@50 and teacher@K (both with CFG) and student@K, in the same process,
            at batch 1 and 32, with the ideal ratio from counting network passes: `DIR/speed.json`;
4. report   `DIR/report.md` and `DIR/report.html` (one self-contained file): tables in the paper's layout, grids,
            speed, the recipe, and the command behind every number (`flashdistill.report`).

Ctrl-C at any point and the same command again continue where it stopped: the trainer resumes from its last
checkpoint, a bench from its cases.jsonl, and finished stages are skipped (`DIR/quickstart.json` records them and
the seconds each took). A run with nothing left to do says so and prints where the report is.

`--preset tiny` is the same pipeline at toy sizes (tests); `--set KEY=VALUE` overrides the recipe (e.g. the
teachers: `--set teachers.base=runs/teacher_base/teacher`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object, write_json_atomic
from flashdistill.runfolder import claim_run

RECIPES = Path(__file__).parent / "assets" / "recipes"
STATE_FILE = "quickstart.json"
STAGES = ("distill", "bench", "speed", "report")


@dataclass(frozen=True)
class Preset:
    """Sizes of a quickstart run. The default fits 15 minutes on a 2-core CPU (see the README for the timing)."""

    name: str
    recipe: str  # file in flashdistill/assets/recipes
    t2i_limit: int  # bench cases per T2I category
    edit_limit: int  # bench cases per edit category
    teacher_nfe: int = 50
    teacher_curve: tuple[int, ...] = (8, 4, 2, 1)  # more teacher rows, for quality against NFE
    speed_batches: tuple[int, ...] = (1, 32)
    speed_repeats: int = 3
    grid_t2i_rows: int = 2  # T2I grid rows per category


PRESETS = {
    "default": Preset("default", "quickstart.yaml", t2i_limit=8, edit_limit=4),
    "tiny": Preset("tiny", "tiny.yaml", t2i_limit=1, edit_limit=1, teacher_nfe=6, teacher_curve=(1,),
                   speed_batches=(1, 2), speed_repeats=1, grid_t2i_rows=1),
}


@dataclass(frozen=True)
class Row:
    """One benchmarked configuration: a model spec at an NFE, with the label the report shows."""

    label: str
    spec: str
    nfe: int

    def folder(self, bench: str) -> str:
        return f"{bench}-{self.label.replace('@', '-nfe').replace(':', '_')}"


def student_nfes(k: int) -> list[int]:
    """The NFEs a K-step student is benched at: K, then the powers of two below it (it samples at K or fewer steps
    on a sub-schedule of its own times)."""
    return [k] + [n for n in (8, 4, 2, 1) if n < k]


def bench_rows(preset: Preset, k: int, teacher_spec: str, student_run: Path) -> list[Row]:
    """teacher@50 and teacher@K (the comparisons the report leads with), the student at its NFEs, then the rest of
    the teacher's curve."""
    rows = [Row(f"teacher@{preset.teacher_nfe}", teacher_spec, preset.teacher_nfe),
            Row(f"teacher@{k}", teacher_spec, k)]
    rows += [Row(f"student@{n}", str(student_run), n) for n in student_nfes(k)]
    return rows + [Row(f"teacher@{n}", teacher_spec, n) for n in preset.teacher_curve
                   if n not in (k, preset.teacher_nfe)]


class State:
    """`DIR/quickstart.json`: the run's identity (preset, overrides), finished stages and seconds per stage."""

    def __init__(self, out: Path, identity: dict):
        self.path = out / STATE_FILE
        identity = json.loads(json.dumps(identity))  # tuples as the file holds them: lists
        data = read_json_object(self.path, "quickstart record") if self.path.exists() else {}
        old = data.get("identity")
        if old is not None and old != identity:
            raise UserError(f"{out} holds a quickstart run with other settings ({old}); use another --out")
        done, seconds = data.get("done", []), data.get("seconds", {})
        if not isinstance(done, list) or not isinstance(seconds, dict) or \
                not all(isinstance(v, (int, float)) for v in seconds.values()):
            raise UserError(f"{self.path}: 'done' must be a list and 'seconds' a mapping of numbers; use another "
                            f"--out")
        self.data = {"identity": identity, "done": done, "seconds": seconds}

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def add_seconds(self, stage: str, seconds: float) -> None:
        self.data["seconds"][stage] = round(self.data["seconds"].get(stage, 0.0) + seconds, 1)
        self._write()

    def finish(self, stage: str) -> None:
        if stage not in self.data["done"]:
            self.data["done"].append(stage)
        self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, self.data)


def recipe_path(preset: Preset) -> Path:
    """The preset's recipe file, relative to the working directory when it lies under it (as in a source checkout),
    so the commands written into the report are short and can be pasted."""
    path = RECIPES / preset.recipe
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def load_quickstart_recipe(preset: Preset, overrides: list[str]):
    from flashdistill.distill.recipe import load_recipe

    return load_recipe(RECIPES / preset.recipe, overrides)


def stage_distill(out: Path, preset: Preset, overrides: list[str], encoder) -> None:
    from flashdistill.distill.export import CHECKPOINT_FILES
    from flashdistill.bench.quick import make_scorer
    from flashdistill.distill.trainer import train_distill
    from flashdistill.runtime.checkpoint import find_checkpoint

    recipe = load_quickstart_recipe(preset, overrides)
    run = out / "distill"
    resume = find_checkpoint(run, CHECKPOINT_FILES) is not None
    command = f"flashdistill distill {recipe_path(preset)} --out {run}" + \
        (" --set " + " ".join(overrides) if overrides else "")
    train_distill(recipe, run, resume=resume, encoder=encoder, command=command, make_scorer=make_scorer)


def stage_bench(out: Path, preset: Preset, overrides: list[str], encoder) -> None:
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


def stage_speed(out: Path, preset: Preset, overrides: list[str], encoder) -> None:
    from flashdistill.pipeline import load_student_model, load_teacher
    from flashdistill.speed import compare
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


def stage_report(out: Path, preset: Preset, overrides: list[str], encoder) -> None:
    from flashdistill.report import write_report

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
    if preset_name not in PRESETS:
        raise UserError(f"--preset: unknown preset '{preset_name}' (known: {', '.join(PRESETS)})")
    preset, overrides = PRESETS[preset_name], list(overrides or [])
    recipe = load_quickstart_recipe(preset, overrides)  # a bad override fails here, before anything is written
    out = Path(out)
    with claim_run(out, "quickstart"):  # another kind of run there, or another process writing it: refused
        return _run_stages(out, preset, overrides, recipe)


def _run_stages(out: Path, preset: Preset, overrides: list[str], recipe) -> Path:
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
