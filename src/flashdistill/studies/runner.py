"""Run a study: every arm over N training seeds, each a distillation run plus its bench slice, resumable.

    flashdistill study data-composition|teacher-guidance|task-mixture [--seeds N] [--preset full|tiny] --out DIR

Layout of DIR:

    study-state.json                    the study's identity (name, preset, overrides, SHA-256 of each
                                        teacher's weights); another is refused
    text-cache/                         text embeddings shared by every run (unless --set run.text_cache=...)
    arms/ARM/seedS/distill/             `flashdistill distill configs/studies/ARM.yaml --set dmd.seed=S ...`
    arms/ARM/seedS/bench/t2i|edit/      the final (EMA) student on the bench slice, world judge
    arms/ARM/seedS/done.json            written atomically once both are finished: the run's summary
    study.json, study.md, curves.png    the report (`flashdistill.studies.report`), rewritten at the end

A run without `done.json` is run again: the trainer continues from its last checkpoint (its own `--resume`, which
refuses a recipe that changed) and a bench from its `cases.jsonl`; runs with `done.json` are never touched. The
student benched is the final EMA export (`student/`), not `best/`: a study asks what training leads to, and
picking the best quick-eval checkpoint would hide the degradation the teacher-guidance study looks for.
"""

from __future__ import annotations

import importlib.util
import shlex
import time
from pathlib import Path

from tqdm import tqdm

from flashdistill.errors import UserError, one_line
from flashdistill.files import hash_file, write_json_atomic
from flashdistill.runfolder import claim_run
from flashdistill.runtime.presets import pick_preset
from flashdistill.runtime.resume import TrainingDiverged
from flashdistill.studies.report import DONE_FILE, seed_dir, write_study_report
from flashdistill.studies.spec import PRESETS, STUDIES, Study, StudyPreset

STATE_FILE = "study-state.json"
RESERVED = ("dmd.seed",)  # the runner sets it per run
MAX_SEEDS = 100  # each seed is a training run per arm; the paper's tables use 3 to 5


def default_recipes() -> Path:
    """configs/studies of the source checkout this package runs from, else of the working directory."""
    here = Path(__file__).resolve().parents[3] / "configs" / "studies"
    return here if here.is_dir() else Path("configs") / "studies"


def lookup(name: str, preset: str) -> tuple[Study, StudyPreset]:
    if name not in STUDIES:
        raise UserError(f"study: unknown study '{name}' (known: {', '.join(STUDIES)})")
    return STUDIES[name], pick_preset(PRESETS, preset).for_study(name)


def check_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in RESERVED:
            raise UserError(f"--set {item}: the study sets {key} itself (one run per training seed)")


def arm_overrides(raw: dict, overrides: list[str]) -> list[str]:
    """The user's overrides that apply to an arm: `teachers.NAME=...` only where the arm's recipe names NAME."""
    teachers = raw.get("teachers") or {}
    keep = []
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("teachers.") and key.split(".", 1)[1] not in teachers:
            continue
        keep.append(item)
    return keep


def run_overrides(study_dir: Path, preset: StudyPreset, raw: dict, seed: int, overrides: list[str]) -> list[str]:
    return [*preset.overrides(), f"dmd.seed={seed}", f"run.text_cache={study_dir / 'text-cache'}",
            *arm_overrides(raw, overrides)]


def load_arm(recipes: Path, recipe_file: str, overrides: list[str]):
    """(raw YAML, Recipe) of one arm with `overrides` applied; bad input -> UserError naming the file."""
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.files import read_yaml

    path = recipes / recipe_file
    raw = read_yaml(path, "study recipe") or {}
    if not isinstance(raw, dict):
        raise UserError(f"study recipe {path}: the top level must be a mapping")
    try:
        return raw, load_recipe(path, overrides)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def teacher_digests(recipes: list) -> dict[str, str]:
    """SHA-256 of the weights of every teacher the recipes name, by recipe spec (`teacher:base`, a path): part of
    a study's identity, so that a study resumed after a teacher was re-shipped or retrained is refused instead of
    mixing arms distilled from two different teachers."""
    import hashlib

    from flashdistill.distill.families import family_for

    digests = {}
    for recipe in recipes:
        for name, spec in recipe.teachers.items():
            if spec in digests:
                continue
            path = Path(family_for(recipe).resolve(spec, f"teachers.{name}"))
            files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
            sha = hashlib.sha256()
            for file in files:
                sha.update(file.relative_to(path).as_posix().encode() if path.is_dir() else b"")
                hash_file(sha, file)
            digests[spec] = sha.hexdigest()
    return digests


class StudyState:
    """`DIR/study-state.json`: what the folder holds. A rerun with another study, preset, overrides or teacher
    weights is refused, so that a resumed study never mixes runs of two settings; --seeds may grow (finished
    seeds are kept)."""

    def __init__(self, out: Path, identity: dict):
        self.path = out / STATE_FILE
        if self.path.is_file():
            from flashdistill.files import read_json_object

            old = read_json_object(self.path, "study state").get("identity")
            if old != identity:
                old_teachers = (old or {}).get("teachers") if isinstance(old, dict) else None
                changed = sorted(k for k in identity.get("teachers", {})
                                 if (old_teachers or {}).get(k) != identity["teachers"][k])
                if old_teachers is not None and changed and \
                        {k: v for k, v in old.items() if k != "teachers"} == \
                        {k: v for k, v in identity.items() if k != "teachers"}:
                    raise UserError(f"{out} holds a study distilled from other weights of {', '.join(changed)} "
                                    f"(re-shipped or retrained since it began); use another --out")
                raise UserError(f"{out} holds a study with other settings ({old}); use another --out")
        else:
            write_json_atomic(self.path, {"identity": identity})


def check_finished_runs(out: Path, study: Study, size: StudyPreset, recipes: Path, overrides: list[str]) -> None:
    """Every finished run in `out` was trained on the recipe the arm's file gives now (compared as --resume compares,
    without the resumable keys): so that a study continued with other recipes (`--recipes`, or recipe files
    edited since it began) is refused instead of mixing runs of two recipes in one table."""
    from flashdistill.distill.recipe import recipe_from_raw, resume_fingerprint
    from flashdistill.files import read_json_object

    for arm in study.arms:
        raw = None
        for folder in sorted((out / "arms" / arm.key).glob("seed*")):
            if not (folder / DONE_FILE).is_file() or not folder.name[4:].isdigit():
                continue
            if raw is None:
                raw, _ = load_arm(recipes, arm.recipe, [])
            seed = int(folder.name[4:])
            record = folder / "distill" / "student" / "student.json"
            saved = read_json_object(record, "student record").get("recipe")
            try:
                ran = resume_fingerprint(recipe_from_raw(saved, []))
            except (UserError, TypeError, AttributeError):
                raise UserError(f"{record}: its 'recipe' does not read back; use another --out") from None
            _, now = load_arm(recipes, arm.recipe, run_overrides(out, size, raw, seed, overrides))
            if ran != resume_fingerprint(now):
                raise UserError(f"{folder}: finished with another recipe than {recipes / arm.recipe} gives now; "
                                f"continue this study with the recipes it ran from (--recipes), or use another --out")


def is_done(out: Path, arm: str, seed: int) -> bool:
    return (seed_dir(out, arm, seed) / DONE_FILE).is_file()


def train_run(recipe, run: Path, encoder, command: str) -> dict:
    """One distillation with the world-judged quick evaluation, resumed when its folder holds a checkpoint
    (distill/run_or_resume.py, as the quickstart's distill stage)."""
    from flashdistill.bench.quick import make_scorer
    from flashdistill.distill.run_or_resume import train_or_resume

    return train_or_resume(recipe, run, encoder, command, make_scorer)


def bench_run(study: Study, preset: StudyPreset, run: Path, folder: Path, encoder) -> dict:
    """The final student of `run` on each of the study's benches (slices of the mini benches, world judge)."""
    from flashdistill.bench.quick import WorldSlice
    from flashdistill.pipeline import load_student_model

    model = load_student_model(run / "student", name=f"{run.parent.parent.name}/{run.parent.name}",
                               encoder=encoder)
    limits = {"t2i": preset.t2i_limit, "edit": preset.edit_limit}
    bench_slice = WorldSlice({bench: limits[bench] for bench in study.benches}, model.resolution)
    results = {}
    for bench in study.benches:
        res = bench_slice.run(bench, model, folder / bench, model.default_nfe)
        results[bench] = {"average": res["average"], "per_category": res["per_category"], "n_cases": res["n_cases"],
                          "n_failed": res["n_failed"]}
    return results


def run_one(study: Study, preset: StudyPreset, out: Path, arm, seed: int, recipes: Path, overrides: list[str],
            encoder) -> dict:
    """Distil and bench arm × seed, then write its done.json (the summary the report reads)."""
    raw, _ = load_arm(recipes, arm.recipe, [])
    sets = run_overrides(out, preset, raw, seed, overrides)
    _, recipe = load_arm(recipes, arm.recipe, sets)
    folder = seed_dir(out, arm.key, seed)
    command = f"flashdistill distill {recipes / arm.recipe} --out {folder / 'distill'} --set {shlex.join(sets)}"
    start = time.perf_counter()
    summary = train_seed(recipe, folder, encoder, command)
    trained = time.perf_counter()
    benches = bench_run(study, preset, folder / "distill", folder / "bench", encoder)
    return write_done(folder, arm.key, seed, str(recipes / arm.recipe), sets, command, summary, benches,
                      (start, trained))


def train_seed(recipe, folder: Path, encoder, command: str) -> dict:
    """The distillation of one arm × seed into `folder/distill` (resumed when it holds a checkpoint); a diverged
    run names its folder and the command that continues it."""
    try:
        return train_run(recipe, folder / "distill", encoder, command)
    except TrainingDiverged as err:
        raise TrainingDiverged(f"{folder}: {one_line(err)}. Continue that run with `{command} --resume` and a "
                               f"lower dmd.lr=..., then run the study command again") from None


def write_done(folder: Path, arm: str, seed: int, recipe: str, sets: list[str], command: str, summary: dict,
               benches: dict, times: tuple[float, float]) -> dict:
    """Write `folder/done.json`, the finished run's record the report reads; `times`: perf_counter at the
    start of this call and when its training ended."""
    start, trained = times
    done = {"arm": arm, "seed": seed, "recipe": recipe, "overrides": sets, "command": command,
            "train": {k: summary[k] for k in ("iterations", "resumed_from", "final_loss", "wall_time_s",
                                              "skipped_total")},
            "bench": benches, "seconds": {"train_this_call": round(trained - start, 1),
                                          "bench_this_call": round(time.perf_counter() - trained, 1)}}
    write_json_atomic(folder / DONE_FILE, done)
    return done


def run_study(name: str, out: Path, seeds: int = 3, preset: str = "full", overrides: list[str] | None = None,
              recipes: Path | None = None, encoder=None, arms: list[str] | None = None,
              command: str | None = None) -> Path:
    """Run (or continue) study `name` into `out`; returns the path of study.md. `arms` restricts the run and the
    report to those arm keys; `encoder` replaces MiniLM (tests share one)."""
    study, size, out = *lookup(name, preset), Path(out)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {MAX_SEEDS} (each seed is a full training run per arm), "
                        f"got {seeds}")
    overrides = list(overrides or [])
    check_overrides(overrides)
    if importlib.util.find_spec("matplotlib") is None:  # the curves are drawn at the end: say so now, not then
        raise UserError("flashdistill study draws its curves with matplotlib: pip install matplotlib")
    recipes = Path(recipes) if recipes is not None else default_recipes()
    unknown = sorted(set(arms or ()) - {a.key for a in study.arms})
    if unknown:
        raise UserError(f"--arms: {', '.join(unknown)} not in study {name} (its arms: "
                        f"{', '.join(a.key for a in study.arms)})")
    chosen = [a for a in study.arms if arms is None or a.key in arms]
    loaded = {}
    for arm in study.arms:  # every recipe and override is checked before anything runs
        raw, _ = load_arm(recipes, arm.recipe, [])
        loaded[arm.key] = load_arm(recipes, arm.recipe, run_overrides(out, size, raw, 0, overrides))[1]
    with claim_run(out, "study"):  # another kind of run there, or another process writing it: refused
        StudyState(out, {"study": name, "preset": preset, "overrides": overrides,
                         "teachers": teacher_digests(list(loaded.values()))})
        check_finished_runs(out, study, size, recipes, overrides)
        _run_arms(study, size, out, chosen, seeds, recipes, overrides, encoder)
        return write_study_report(study, out, seeds, [a.key for a in chosen], size, overrides, command)


def _run_arms(study: Study, size: StudyPreset, out: Path, chosen: list, seeds: int, recipes: Path,
              overrides: list[str], encoder) -> None:
    """Every arm × seed without its done.json, in order."""
    todo = [(a, s) for a in chosen for s in range(seeds) if not is_done(out, a.key, s)]
    print(f"study {study.name}: {len(chosen)} arms × {seeds} seeds, {len(todo)} runs to do "
          f"({len(chosen) * seeds - len(todo)} finished earlier) -> {out}", flush=True)
    if todo and encoder is None:
        from flashdistill.models.text import TextEncoder

        encoder = TextEncoder()
    for arm in chosen:
        finished = sum(is_done(out, arm.key, s) for s in range(seeds))
        with tqdm(total=seeds, initial=finished, desc=f"{study.name} {arm.key}", unit="seed", position=0,
                  dynamic_ncols=True) as bar:
            for seed in range(seeds):
                if not is_done(out, arm.key, seed):
                    run_one(study, size, out, arm, seed, recipes, overrides, encoder)
                    bar.update(1)
