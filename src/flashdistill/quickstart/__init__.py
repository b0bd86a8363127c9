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
            speed, the recipe, and the command behind every number (`report.py`).

Ctrl-C at any point and the same command again continue where it stopped: the trainer resumes from its last
checkpoint, a bench from its cases.jsonl, and finished stages are skipped (`DIR/quickstart.json` records them and
the seconds each took). A run with nothing left to do says so and prints where the report is.

`--preset tiny` is the same pipeline at toy sizes (tests); `--set KEY=VALUE` overrides the recipe (e.g. the
teachers: `--set teachers.base=runs/teacher_base/teacher`).

The package: `plan.py` (presets, bench rows, the recipe, quickstart.json), `stages.py` (the four stages and
`quickstart`), `speed.py` (images per second, measured alike for teachers and students; the distillation
iteration's split into parts; also `benchmarks/speed.py`'s), `report.py` (report.md and report.html).
"""

from flashdistill.quickstart.plan import (
    PRESETS,
    STATE_FILE,
    QuickstartPreset,
    Row,
    State,
    bench_rows,
    recipe_path,
    student_nfes,
)
from flashdistill.quickstart.stages import STAGES, quickstart

__all__ = ["PRESETS", "STAGES", "STATE_FILE", "QuickstartPreset", "Row", "State", "bench_rows", "quickstart",
           "recipe_path", "student_nfes"]
