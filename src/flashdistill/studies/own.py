"""The paper's three studies on your own model: arms made from your recipe and data files, each arm × training seed
one distillation whose final student the VLM judge scores on the recipe's eval files.

    flashdistill study task-mixture --recipe configs/qwen-image-flash.yaml --set teachers.base=DIR \\
        teachers.specialized=LORA data.prompts=P data.edits=E eval.prompts=EP eval.edits=EE run.text_cache=CACHE \\
        eval.vlm_base_url=URL eval.vlm_model=MODEL --preset small --seeds 2 --out runs/study-mix

The arms are overrides of that recipe (`Arm.overrides`), derived from its data:

- data-composition: each category of data.prompts alone (`only-CAT`), every category together (`all`), and each
  `--mix A+B` (`mix-A+B`); T2I only (tasks.ratio 1:0), judged on eval.prompts.
- teacher-guidance: the base teacher only (`base`), the specialized teacher directly (`specialized`), the recipe's
  own step-wise rows (`stepwise`); T2I only, judged on eval.prompts; needs teachers.specialized.
- task-mixture: T2I only (`t2i-only`, zero-shot on editing), 9:1, 7:3 and 5:5; judged on eval.edits and
  eval.prompts; needs data.edits and eval.edits.

Each run is `flashdistill distill RECIPE --set ... dmd.seed=S eval.judge=vlm eval.every=E` with E dividing
dmd.iterations, so its last quick evaluation samples and judges the final EMA student (not `best/`: a study asks
what training leads to); `eval/step-N/scores.jsonl` of that evaluation is the run's result (bench/file_eval.py),
copied to `bench/TASK/cases.jsonl`. An item the judge could not score (an outage after the judge's own retries) is
judged again from its saved PNG; if it still fails the command ends with exit 1 saying so, and the same command
later judges only what is missing. The quick evaluations before give the curves (drift, drop).

The folder layout, the report (studies/report.py: mean ± 95% CI over seeds, per-seed paired findings with verdicts,
curves) and the resume rules are those of the embedded studies (studies/runner.py): finished runs (`done.json`)
are kept, an unfinished one resumes from its checkpoint, and a folder that holds a study of another recipe,
preset, data or teacher weights is refused, naming what changed. Before the first run one line says what the study
will cost. Under torchrun with more than one rank the study is refused (run it as one process; one GPU, or
`torchrun --nproc_per_node=1` with run.parallel fsdp, works). The final judged result is studies/own_judge.py, the
cost line studies/own_cost.py. Tests: `pytest tests/test_own_study.py`.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import read_json_object, write_json_atomic
from flashdistill.runfolder import claim_run
from flashdistill.runtime.presets import Preset, pick_preset, preset_table
from flashdistill.studies.report import DONE_FILE, seed_dir, write_study_report
from flashdistill.studies.spec import Arm, Finding, Study

STATE_FILE = "study-state.json"
RESERVED = ("dmd.seed", "eval.judge")  # set per run / always vlm
MAX_SEEDS = 100



@dataclass(frozen=True)
class OwnPreset(Preset):
    """Sizes of every run of a study on your model: overrides on top of your recipe, and how many quick
    evaluations a run makes (eval.every = dmd.iterations / evaluations, unless you --set eval.every)."""

    sets: tuple[str, ...]
    evaluations: int

    def sizes(self, recipe) -> dict:
        return {"iterations": recipe.dmd.iterations, "batch_size": recipe.dmd.batch_size,
                "eval_every": recipe.eval.every, "sets": list(self.sets)}


OWN_PRESETS = preset_table(
    OwnPreset("full", (), 10),  # the recipe's own sizes (configs/qwen-image-flash.yaml: 2000 iterations)
    OwnPreset("small", ("data.resolution=512", "roles.lora_rank=16", "dmd.iterations=300",
                        "run.checkpoint_every=50"), 6),
    OwnPreset("tiny", ("dmd.iterations=2", "dmd.batch_size=2", "run.micro_batch=0", "roles.lora_rank=4",
                       "critic.updates=1", "run.checkpoint_every=1"), 2),
)


class OwnStudy:
    """A study on the user's recipe: the base recipe (their overrides and the preset applied), the arms derived from
    it, and the overrides of each run."""

    def __init__(self, name: str, recipe_path: Path, preset: str, overrides: list[str], mixes: list[str]):
        from flashdistill.distill.recipe import load_recipe

        own_preset = pick_preset(OWN_PRESETS, preset, " for a study on your recipe")
        for item in overrides:
            key = item.split("=", 1)[0].strip()
            if key in RESERVED:
                raise UserError(f"--set {item}: the study sets {key} itself (one run per training seed, judged by "
                                f"the VLM judge)")
        self.name, self.path, self.preset = name, Path(recipe_path), own_preset
        self.overrides, self.mixes = list(overrides), list(mixes)
        sized = [*self.preset.sets, *overrides]  # the user's --set win over the preset's sizes
        first = load_recipe(self.path, sized)
        every = _eval_every(first, self.preset, overrides)
        self.sets = [*sized, "eval.judge=vlm", "eval.patience=0", f"eval.every={every}"]
        self.recipe = load_recipe(self.path, self.sets)
        if not self.recipe.data.uses_files():
            raise UserError(f"{self.path}: a study on your model needs data files (data.prompts / data.edits); the "
                            f"embedded world's studies run without --recipe")
        if not self.recipe.eval.prompts:
            raise UserError("eval.prompts: not set; the study's judge scores each final student on it (--set "
                            "eval.prompts=FILE, encoded by `flashdistill cache` with the training files)")
        self.study = derive(name, self.recipe, mixes, str(self.path))

    def run_sets(self, arm: Arm, seed: int) -> list[str]:
        return [*self.sets, *arm.overrides, f"dmd.seed={seed}"]

    def arm_recipe(self, arm: Arm, seed: int):
        from flashdistill.distill.recipe import load_recipe

        try:
            return load_recipe(self.path, self.run_sets(arm, seed))
        except UserError as err:
            raise UserError(f"arm {arm.key}: {err}") from None


def _eval_every(recipe, preset: OwnPreset, overrides: list[str]) -> int:
    """eval.every: the user's when set, else dmd.iterations / the preset's evaluations; it must divide
    dmd.iterations, so that the last evaluation judges the final student."""
    total = recipe.dmd.iterations
    given = any(o.split("=", 1)[0].strip() == "eval.every" for o in overrides)
    every = recipe.eval.every if given else max(1, total // preset.evaluations)
    if every < 1 or total % every:
        raise UserError(f"eval.every: {every} does not divide dmd.iterations {total}; the study's last quick "
                        f"evaluation must judge the final student (choose a divisor of {total})")
    return every


def _category_mapping(category: str) -> str:
    return json.dumps({category: 1})  # a YAML flow mapping (JSON is YAML), whatever the category's characters


def derive(name: str, recipe, mixes: list[str], src: str = "") -> Study:
    """The Study of `name` over the recipe's data: its arms (overrides of the recipe file `src`), findings and the
    categories it reports."""
    from flashdistill.data.files import read_edits, read_prompts

    e = recipe.eval
    t2i_eval = list(dict.fromkeys(i.category for i in read_prompts(e.prompts)))
    edit_eval = list(dict.fromkeys(i.category for i in read_edits(e.edits, check_images=False))) if e.edits else []
    if mixes and name != "data-composition":
        raise UserError(f"--mix: only the data-composition study has mixes (this is {name})")
    if name == "data-composition":
        return _data_composition(recipe, mixes, t2i_eval, src)
    if name == "teacher-guidance":
        return _teacher_guidance(recipe, t2i_eval, src)
    if name == "task-mixture":
        return _task_mixture(recipe, t2i_eval, edit_eval, src)
    raise UserError(f"study: unknown study '{name}' (known: data-composition, teacher-guidance, task-mixture)")


T2I_ONLY = ("tasks.ratio=1:0", "eval.edits=null")  # a T2I lever, judged on T2I only


def _data_composition(recipe, mixes: list[str], t2i_eval: list[str], src: str) -> Study:
    cats = list(recipe.known[0])
    if len(cats) < 2:
        raise UserError(f"data.prompts: {recipe.data.prompts} holds one category ({', '.join(cats) or 'none'}); "
                        f"the data-composition study compares categories")
    arms = [Arm(f"only-{c}", src, f"{c} only", (*T2I_ONLY, f"data.composition={_category_mapping(c)}"))
            for c in cats]
    arms.append(Arm("all", src, "every category", (*T2I_ONLY, "data.composition=null")))
    findings = []
    where = "§3.3, Table 1"
    for c in cats:
        findings.append(Finding(f"only-{c}-vs-all", f"{c} alone is at least as good as every category together",
                                f"only-{c}", "all", "t2i", "average", 1, f"{where} (E1, E2 vs E5)"))
        if c in t2i_eval:
            findings.append(Finding(f"only-{c}-own-split", f"{c} alone beats every category together on {c}",
                                    f"only-{c}", "all", "t2i", c, 1, f"{where} (E1 vs E5 on its split)"))
    for mix in mixes:
        names = [n.strip() for n in mix.split("+")]
        unknown = [n for n in names if n not in cats]
        if len(names) < 2 or unknown or len(set(names)) != len(names):
            raise UserError(f"--mix {mix}: name two or more different categories of data.prompts joined by + "
                            f"({'unknown: ' + ', '.join(unknown) if unknown else 'e.g. ' + '+'.join(cats[:2])}; "
                            f"known: {', '.join(cats)})")
        key = "mix-" + "+".join(names)
        comp = json.dumps({n: 1 for n in names})
        arms.append(Arm(key, src, " + ".join(names), (*T2I_ONLY, f"data.composition={comp}")))
        for n in names:
            findings.append(Finding(f"{key}-vs-only-{n}", f"{' + '.join(names)} does not beat {n} alone", key,
                                    f"only-{n}", "t2i", "average", -1, f"{where} (E4 vs E2)"))
    return Study("data-composition", "Data composition on your data (paper §3, Table 1)", tuple(arms), ("t2i",),
                 tuple(findings), curve="t2i", categories={"t2i": tuple(t2i_eval)})


def _teacher_guidance(recipe, t2i_eval: list[str], src: str) -> Study:
    if set(recipe.teachers) != {"base", "specialized"}:
        raise UserError(f"teachers: the teacher-guidance study needs exactly teachers.base and teachers.specialized "
                        f"(the recipe names {', '.join(recipe.teachers)}); set --set teachers.specialized=PATH")
    t2i_cats = list(recipe.known[0])
    stepwise = [c for c in t2i_cats if any(row.get("specialized", 0) > 0 for row in recipe.guidance[c])]
    if not stepwise:
        raise UserError("guidance: the recipe guides every T2I category by the base teacher alone, so its step-wise "
                        "arm would be the base arm; give the categories the specialized teacher knows rows that "
                        "name it (configs/qwen-image-flash.yaml's `text`)")
    arms = (Arm("base", src, "base only", (*T2I_ONLY, 'guidance={"default": {"base": 1.0}}')),
            Arm("specialized", src, "specialized only (direct)",
                (*T2I_ONLY, 'guidance={"default": {"specialized": 1.0}}')),
            Arm("stepwise", src, f"the recipe's step-wise rows ({', '.join(stepwise)})", T2I_ONLY))
    findings = [
        Finding("direct-degrades", "direct specialized guidance gets worse as training goes on (negative drift)",
                "specialized", None, "curve", "drift", -1, "§4.2, Figure 3a"),
        Finding("stepwise-stabilizes", "step-wise guidance drifts less than direct specialized guidance", "stepwise",
                "specialized", "curve", "drift", 1, "§4.4, Figure 3b"),
        Finding("stepwise-beats-direct", "step-wise ends better than direct specialized guidance", "stepwise",
                "specialized", "t2i", "average", 1, "§4.4")]
    findings += [Finding(f"stepwise-{c}", f"step-wise transfers the specialized teacher's strength: {c} above base "
                                          f"only", "stepwise", "base", "t2i", c, 1, "§4.4, Table 2")
                 for c in stepwise if c in t2i_eval]
    return Study("teacher-guidance", "Teacher guidance on your model (paper §4, Figure 3, Table 2)", arms, ("t2i",),
                 tuple(findings), curve="t2i", drop_pairs=(("stepwise", "specialized"), ("base", "specialized")),
                 categories={"t2i": tuple(t2i_eval)})


def _task_mixture(recipe, t2i_eval: list[str], edit_eval: list[str], src: str) -> Study:
    if not recipe.data.edits:
        raise UserError("data.edits: not set; the task-mixture study mixes T2I with editing (--set data.edits=FILE)")
    if not edit_eval:
        raise UserError("eval.edits: not set; the task-mixture study judges editing too (--set eval.edits=FILE)")
    from flashdistill.world.categories import EDIT_SUBSCORE_KEYS

    unknown = [c for c in edit_eval if c not in EDIT_SUBSCORE_KEYS]
    if unknown:
        raise UserError(f"eval.edits: {recipe.eval.edits}: categories {', '.join(unknown)} have no Editing-Bench "
                        f"rubric for the VLM judge; label eval edits with one of {', '.join(EDIT_SUBSCORE_KEYS)}")
    arms = (Arm("t2i-only", src, "T2I only (zero-shot on editing)", ("tasks.ratio=1:0",)),
            Arm("9to1", src, "9:1", ("tasks.ratio=9:1",)),
            Arm("7to3", src, "7:3", ("tasks.ratio=7:3",)),
            Arm("5to5", src, "5:5", ("tasks.ratio=5:5",)))
    t3, t4 = "§5.3, Table 3", "§5.4, Table 4"
    findings = (Finding("55-beats-zero-shot", "5:5 edits better than the zero-shot T2I-only student", "5to5",
                        "t2i-only", "edit", "average", 1, t3),
                Finding("55-beats-73", "5:5 edits better than 7:3", "5to5", "7to3", "edit", "average", 1, t3),
                Finding("55-beats-91", "5:5 edits better than 9:1", "5to5", "9to1", "edit", "average", 1, t3),
                *(Finding(f"edit-helps-t2i-{k}", f"editing data helps T2I: {label} above T2I only", k, "t2i-only",
                          "t2i", "average", 1, t4) for k, label in (("9to1", "9:1"), ("7to3", "7:3"),
                                                                    ("5to5", "5:5"))))
    return Study("task-mixture", "Task mixture on your model (paper §5, Tables 3-4)", arms, ("edit", "t2i"),
                 findings, curve="score", categories={"t2i": tuple(t2i_eval), "edit": tuple(edit_eval)})


# ---------------------------------------------------------------------------------------------------- runs


def check_identity(out: Path, identity: dict) -> None:
    """`out/study-state.json` holds this study's identity; a folder holding another is refused, naming what
    differs (the recipe's settings, the preset, the mixes, a changed input file or teacher weights)."""
    path = out / STATE_FILE
    if not path.is_file():
        write_json_atomic(path, {"identity": identity})
        return
    old = read_json_object(path, "study state").get("identity")
    if old == identity:
        return
    if not isinstance(old, dict):
        raise UserError(f"{path}: holds a study of another kind; use another --out")
    from flashdistill.runtime.inputs import input_changes

    changed = input_changes(old.get("inputs"), identity["inputs"])
    if changed:
        raise UserError(f"{out} holds a study on other inputs ({changed[0]}); use another --out")
    keys = [k for k in identity if k != "inputs" and old.get(k) != identity[k]]
    detail = keys[0] if keys else "its identity"
    if keys and keys[0] == "recipe" and isinstance(old.get("recipe"), dict):
        sub = [f"{g}.{k}" for g, v in identity["recipe"].items() if isinstance(v, dict)
               for k in v if (old["recipe"].get(g) or {}).get(k) != v[k]]
        detail = f"the recipe ({', '.join(sub[:3]) or 'its settings'})"
    raise UserError(f"{out} holds a study with another {detail} than this command gives; continue it with the "
                    f"command it was started with, or use another --out")


def run_own_study(name: str, recipe_path: Path, out: Path, seeds: int = 2, preset: str = "small",
                  overrides: list[str] | None = None, mixes: list[str] | None = None, arms: list[str] | None = None,
                  command: str | None = None, dry_run: bool = False) -> Path | None:
    """Run (or continue) study `name` on the user's recipe into `out`; returns study.md's path (None on a dry run,
    which prints the arms and the cost line and runs nothing)."""
    import importlib.util

    from flashdistill.distill.families import family_for
    from flashdistill.distill.inputs import input_fingerprint

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("flashdistill study runs as one process: start it without torchrun (one GPU), or with "
                        "torchrun --nproc_per_node=1 for run.parallel fsdp with run.fsdp_offload")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise UserError(f"--seeds must be between 1 and {MAX_SEEDS} (each seed is a full training run per arm), "
                        f"got {seeds}")
    own = OwnStudy(name, recipe_path, preset, list(overrides or []), list(mixes or []))
    study, out = own.study, Path(out)
    unknown = sorted(set(arms or ()) - {a.key for a in study.arms})
    if unknown:
        raise UserError(f"--arms: {', '.join(unknown)} not in this study (its arms: "
                        f"{', '.join(a.key for a in study.arms)})")
    chosen = [a for a in study.arms if arms is None or a.key in arms]
    for arm in study.arms:  # every arm's recipe is checked before anything runs
        own.arm_recipe(arm, 0)
    todo = [(a, s) for a in chosen for s in range(seeds) if not (seed_dir(out, a.key, s) / DONE_FILE).is_file()]
    from flashdistill.studies.own_cost import cost_line

    print(cost_line(own, out, seeds, todo), flush=True)
    if dry_run:
        for arm in study.arms:
            print(f"  {arm.key:<24} {arm.label}: --set {shlex.join(arm.overrides) or '(the recipe as it is)'}")
        return None
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("flashdistill study draws its curves with matplotlib: pip install matplotlib")
    with claim_run(out, "study"):
        identity = {"study": name, "recipe_file": str(own.path.resolve()), "recipe": own.recipe.to_dict(),
                    "preset": preset, "mixes": own.mixes,
                    "inputs": input_fingerprint(own.recipe, family_for(own.recipe))}
        check_identity(out, identity)
        from tqdm import tqdm

        with tqdm(total=len(chosen) * seeds, initial=len(chosen) * seeds - len(todo), desc=f"study {name}",
                  unit="run", dynamic_ncols=True) as bar:
            for arm, seed in todo:
                run_one(own, out, arm, seed)
                bar.update(1)
        setting = (f"Your recipe `{own.path}` with preset `{preset}` ({' '.join(own.preset.sets) or 'its own sizes'}"
                   f"): {own.recipe.dmd.iterations} iterations at batch {own.recipe.dmd.batch_size} per run, a "
                   f"judged quick evaluation every {own.recipe.eval.every}; each run's final EMA student judged by "
                   f"the VLM judge `{own.recipe.eval.vlm_model}` on eval.prompts"
                   + (" and eval.edits" if "edit" in study.benches else "") + ".")
        titles = {"t2i": f"T2I on eval.prompts ({own.recipe.eval.prompts})",
                  "edit": f"Editing on eval.edits ({own.recipe.eval.edits})"}
        return write_study_report(study, out, seeds, [a.key for a in chosen], _Sized(own), own.overrides, command,
                                  own={"setting": setting, "titles": titles, "judge": "VLM judge"})


class _Sized:
    """What the report reads of a preset: its name and the sizes of the runs."""

    def __init__(self, own: OwnStudy):
        self.name, self._sizes = own.preset.name, own.preset.sizes(own.recipe)

    def sizes(self) -> dict:
        return self._sizes


def run_one(own: OwnStudy, out: Path, arm: Arm, seed: int) -> dict:
    """Distil arm × seed (resumed when its folder holds a checkpoint), take its final judged evaluation, write
    done.json."""
    from flashdistill.studies.own_judge import final_scores
    from flashdistill.studies.runner import train_seed, write_done

    recipe = own.arm_recipe(arm, seed)
    folder = seed_dir(out, arm.key, seed)
    sets = own.run_sets(arm, seed)
    command = f"flashdistill distill {own.path} --out {folder / 'distill'} --set {shlex.join(sets)}"
    start = time.perf_counter()
    summary = train_seed(recipe, folder, None, command)
    trained = time.perf_counter()
    benches = final_scores(recipe, folder / "distill", folder / "bench", own.study.benches, f"{arm.key} seed {seed}")
    return write_done(folder, arm.key, seed, str(own.path), sets, command, summary, benches, (start, trained))
