"""What a quickstart run is made of: its presets (the sizes), the rows it benches, its recipe and its record
(`DIR/quickstart.json`: the run's identity, finished stages and seconds per stage)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object, write_json_atomic
from flashdistill.runtime.presets import Preset, preset_table

RECIPES = Path(__file__).parent.parent / "assets" / "recipes"  # flashdistill/assets/recipes
STATE_FILE = "quickstart.json"


@dataclass(frozen=True)
class QuickstartPreset(Preset):
    """Sizes of a quickstart run. The default fits 15 minutes on a 2-core CPU (see the README for the timing)."""

    recipe: str  # file in flashdistill/assets/recipes
    t2i_limit: int  # bench cases per T2I category
    edit_limit: int  # bench cases per edit category
    teacher_nfe: int = 50
    teacher_curve: tuple[int, ...] = (8, 4, 2, 1)  # more teacher rows, for quality against NFE
    speed_batches: tuple[int, ...] = (1, 32)
    speed_repeats: int = 3
    grid_t2i_rows: int = 2  # T2I grid rows per category


PRESETS = preset_table(
    QuickstartPreset("default", "quickstart.yaml", t2i_limit=8, edit_limit=4),
    QuickstartPreset("tiny", "tiny.yaml", t2i_limit=1, edit_limit=1, teacher_nfe=6, teacher_curve=(1,),
                     speed_batches=(1, 2), speed_repeats=1, grid_t2i_rows=1),
)


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


def bench_rows(preset: QuickstartPreset, k: int, teacher_spec: str, student_run: Path) -> list[Row]:
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


def recipe_path(preset: QuickstartPreset) -> Path:
    """The preset's recipe file, relative to the working directory when it lies under it (as in a source checkout),
    so the commands written into the report are short and can be pasted."""
    path = RECIPES / preset.recipe
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def load_quickstart_recipe(preset: QuickstartPreset, overrides: list[str]):
    from flashdistill.distill.recipe import load_recipe

    return load_recipe(RECIPES / preset.recipe, overrides)
