"""The `flashdistill` command. Each subcommand is a thin layer over a library function; `--help` on any of them
explains its options. Bad input ends with one line naming what is wrong and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashdistill.cliargs import Parser, nonneg_float, nonneg_int, positive_int
from flashdistill.errors import UserError, one_line
from flashdistill.files import out_dir, out_file
from flashdistill.runfolder import check_run
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES

from flashdistill.bench.cases import BUILTIN_CASES, MINI_SIZES  # noqa: F401  (MINI_SIZES re-exported for scripts)
DEFAULT_RESOLUTION = 32  # the embedded world's side
CALIBRATION_MODELS = ("oracle", "oracle-blur:0.5", "oracle-blur:1", "oracle-blur:2", "oracle-noise:0.05",
                      "oracle-noise:0.1", "oracle-noise:0.2", "noise")


# ---- world ------------------------------------------------------------------------------------------------
def cmd_world_sample(args) -> None:
    from flashdistill.world.sample import sample_grid

    out_file(args.out)
    sample_grid(args.category, args.n, args.out, args.split, args.start, args.resolution)
    print(f"wrote {args.out}")


def cmd_world_legibility(args) -> None:
    from flashdistill.world.legibility import measure, print_table

    print_table(measure(args.n, tuple(args.resolutions)))


# ---- bench ------------------------------------------------------------------------------------------------
def _judge(args, resolution: int):
    if args.judge == "world":
        from flashdistill.bench.world_judge import WorldJudge

        return WorldJudge(resolution)
    from flashdistill.bench.vlm import VLMJudge

    if not args.vlm_base_url or not args.vlm_model:
        raise UserError("--judge vlm needs --vlm-base-url and --vlm-model")
    return VLMJudge(args.vlm_base_url, args.vlm_model, api_key_env=args.vlm_api_key_env,
                    concurrency=args.vlm_concurrency)


def _first_case_error(path: Path) -> str:
    """The first recorded case error of a bench run (scrubbed by the judge when written), on one short line."""
    from flashdistill.files import parse_json

    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            error = parse_json(line, str(path)).get("error")
        except (UserError, AttributeError):
            continue
        if error:
            return " ".join(str(error).split())[:200]
    return "none recorded"


def cmd_bench_run(args) -> None:
    from flashdistill.bench.cases import load_cases
    from flashdistill.bench.models import load_model
    from flashdistill.bench.runner import run_bench

    check_run(args.out, "bench")  # another run's folder is refused before the model loads
    cases_file = Path(args.cases) if args.cases else BUILTIN_CASES[args.bench]
    known = T2I_CATEGORIES if args.bench == "t2i" else EDIT_CATEGORIES
    for category in args.category or []:
        if category not in known:
            raise UserError(f"--category: unknown {args.bench} category '{category}' (known: {', '.join(known)})")
    cases = load_cases(cases_file, args.bench, args.limit, args.category)
    label = str(cases_file) if args.cases else f"builtin:{cases_file.name}"
    model = load_model(args.model, args.resolution, args.cfg, args.batch_size)
    nfe = args.nfe if args.nfe is not None else getattr(model, "default_nfe", None)
    results = run_bench(args.bench, model, _judge(args, args.resolution), cases, Path(args.out), nfe, label,
                        args.resolution, args.batch_size, retry_failed=args.retry_failed)
    print(f"{results['bench']} {results['model']}: average {results['average']} over {results['n_cases']} cases "
          f"({results['n_failed']} failed) -> {Path(args.out) / 'results.json'}")
    if results["unscored_categories"]:  # no average: a script must not take this run for a complete one
        print(f"error: every case of {', '.join(results['unscored_categories'])} failed, so the bench has no "
              f"average (first error: {_first_case_error(Path(args.out) / 'cases.jsonl')}); see "
              f"{Path(args.out) / 'cases.jsonl'}, then rerun with --retry-failed", file=sys.stderr)
        sys.exit(2)  # the judge named on the command line scored nothing: an input to fix, as a bad URL is


def cmd_bench_table(args) -> None:
    from flashdistill.bench.table import write_table

    out_file(args.out)
    rows = write_table(args.folders, args.out)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} ({len(rows)} rows)")


def cmd_bench_make_cases(args) -> None:
    from flashdistill.bench.cases import edit_bench_cases, t2i_bench_cases, write_cases

    out_file(args.out)
    n = args.n or MINI_SIZES[args.bench]
    cases = t2i_bench_cases(n, args.split) if args.bench == "t2i" else edit_bench_cases(n, args.split)
    write_cases(args.out, cases)
    print(f"wrote {len(cases)} cases to {args.out}")


def cmd_bench_calibrate(args) -> None:
    from flashdistill.bench.calibrate import calibrate

    out_dir(args.out)
    ok = calibrate(Path(args.out), args.models, args.limit)
    if not ok:
        sys.exit(1)


# ---- study ------------------------------------------------------------------------------------------------
def cmd_study(args) -> None:
    import shlex

    from flashdistill.studies.runner import run_study

    argv = ["study", args.name, "--seeds", str(args.seeds), "--preset", args.preset, "--out", args.out]
    argv += ["--recipes", args.recipes] if args.recipes else []
    argv += ["--arms", *args.arms] if args.arms else []
    argv += ["--set", *args.overrides] if args.overrides else []
    from flashdistill.runtime.resume import TrainingDiverged

    try:
        md = run_study(args.name, Path(args.out), args.seeds, args.preset, args.overrides,
                       Path(args.recipes) if args.recipes else None, arms=args.arms,
                       command="flashdistill " + shlex.join(argv))
    except TrainingDiverged as err:  # exit code 1, as `flashdistill distill` gives for a diverged run
        print(f"error: distillation diverged: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    print(f"wrote {md}, {md.with_name('study.json')} and {md.with_name('curves.png')}")


def _add_study(top) -> None:
    from flashdistill.studies.spec import PRESETS, STUDIES

    p = top.add_parser(
        "study", help="run one of the paper's three studies (arms x training seeds) and write its table, "
                      "confidence intervals, verdicts and curves",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run every arm of a study (recipes in configs/studies/) over --seeds training seeds: each "
                    "run is a\ndistillation (dmd.seed = the seed) followed by the final student's bench slice (world "
                    "judge).\nWrites DIR/study.md and DIR/study.json (paper-layout tables as mean ± 95% CI over "
                    "seeds, paired\ndifferences between arms, a verdict per finding beside the paper's numbers) and "
                    "DIR/curves.png\n(quick-eval score over iterations per arm and seed).\n\n"
                    "  data-composition  E1 landscape, E2 portrait, E3 text, E4 landscape+portrait, E5 mixed "
                    "(Table 1)\n"
                    "  teacher-guidance  base only, specialized only, step-wise λ, step-wise + first-step FM "
                    "(§4, §6.1)\n"
                    "  task-mixture      T2I only (zero-shot on editing), 9:1, 7:3, 5:5 on both benches "
                    "(Tables 3-4)\n\n"
                    "Ctrl-C and the same command again continue: finished runs (DIR/arms/ARM/seedS/done.json) are "
                    "kept,\nan unfinished one resumes from its checkpoint and its bench from cases.jsonl.")
    p.add_argument("name", choices=list(STUDIES), metavar="STUDY", help=", ".join(STUDIES))
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds per arm (default 3)")
    p.add_argument("--preset", choices=list(PRESETS), default="full",
                   help="full (sized for ~3 h per study on a 2-core CPU, see the README) or tiny (seconds; a "
                        "smoke test)")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--recipes", default=None, help="folder of the arms' recipes (default: configs/studies)")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="run and report only these arms (e.g. e5_mixed; default: every arm); a later run without "
                        "--arms adds the others")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted recipe overrides for every arm, e.g. teachers.base=runs/teacher_base/teacher "
                        "(a teachers.NAME override applies to the arms that name teacher NAME)")
    p.set_defaults(func=cmd_study)


# ---- quickstart -------------------------------------------------------------------------------------------
def cmd_quickstart(args) -> None:
    from flashdistill.quickstart import quickstart

    quickstart(Path(args.out), args.preset, args.overrides)


# ---- generate / edit --------------------------------------------------------------------------------------
def _pipeline(args):
    from flashdistill.bench.models import load_model

    model = load_model(args.model, args.resolution or DEFAULT_RESOLUTION, args.cfg)
    if not hasattr(model, "sample"):
        raise UserError(f"--model {args.model} is a reference model of the benchmarks; generate needs a network "
                        f"(teacher:base, teacher:specialized or a model folder)")
    _student_flags(model, args)
    return model


def _student_flags(model, args) -> None:
    """--cfg and --resolution on a distilled student: refused or honoured, never ignored."""
    spec = getattr(model, "spec", None)
    if getattr(model, "timesteps", None) is None and getattr(spec, "timesteps", None) is None:
        return  # a teacher: load_model applied both
    if args.cfg is not None:
        raise UserError(f"--cfg {args.cfg:g}: {args.model} is a distilled student, which samples without guidance "
                        f"(DMD trained it on the guided teachers' outputs); --cfg applies to teachers")
    if args.resolution is not None and args.resolution != model.resolution:
        if not hasattr(model, "set_resolution"):
            raise UserError(f"--resolution {args.resolution}: {args.model} works at {model.resolution} px only")
        model.set_resolution(args.resolution)  # a Qwen-Image student: the pipelines take any multiple of 16


def _save_outputs(images, out: str, seeds: list[int]) -> None:
    from flashdistill.imageio import save_png

    path = Path(out)
    if len(images) == 1:
        save_png(path, images[0])
        print(f"wrote {path}")
        return
    for img, seed in zip(images, seeds):
        save_png(path.with_name(f"{path.stem}-seed{seed}{path.suffix}"), img)
    print(f"wrote {len(images)} images {path.with_name(path.stem + '-seed*' + path.suffix)}")


def cmd_generate(args) -> None:
    out_file(args.out)
    model = _pipeline(args)
    seeds = [args.seed + i for i in range(args.n)]
    images = model.sample([args.prompt] * args.n, [None] * args.n, seeds, args.nfe)
    _save_outputs(images, args.out, seeds)


def cmd_edit(args) -> None:
    from flashdistill.imageio import load_png

    out_file(args.out)
    load_png(args.image, what="--image")  # readable before any model is loaded
    model = _pipeline(args)
    source = load_png(args.image, model.resolution, what="--image")
    seeds = [args.seed + i for i in range(args.n)]
    images = model.sample([args.instruction] * args.n, [source] * args.n, seeds, args.nfe)
    _save_outputs(images, args.out, seeds)


def _add_sampling_args(p, what: str) -> None:
    p.add_argument("--model", required=True, help="teacher:base | teacher:specialized | a model or student folder")
    p.add_argument("--nfe", type=positive_int, default=None,
                   help="sampling steps (default: 50 for teachers, the schedule's 4 for students); with CFG each "
                        "teacher step costs two network passes")
    p.add_argument("--cfg", type=nonneg_float, default=None,
                   help="classifier-free guidance scale for teachers (default: the one the teacher records); a "
                        "distilled student samples unguided and refuses it")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed: the same seed gives the same image")
    p.add_argument("--n", type=positive_int, default=1, help=f"{what} this many images, seeds S, S+1, ...")
    p.add_argument("--out", required=True, help="PNG path (with --n > 1: PATH-seedS.png per image)")
    p.add_argument("--resolution", type=positive_int, default=None,
                   help=f"the model's resolution (default: a student's own, {DEFAULT_RESOLUTION} for teachers); a "
                        f"Qwen-Image student samples at any multiple of 16")


# ---- judge ------------------------------------------------------------------------------------------------
def cmd_judge_train_reader(args) -> None:
    from flashdistill.bench.reader import train_reader

    out_file(args.out)
    kwargs = {"seed": args.seed}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    summary = train_reader(args.out, **kwargs)
    print(json.dumps(summary, indent=2))


def cmd_judge_eval_reader(args) -> None:
    from flashdistill.bench.reader import accuracy_table
    from flashdistill.models.reader import load_reader

    if args.json:
        out_file(args.json, "--json")
    table, results = accuracy_table(load_reader(args.weights), n_per_category=args.n)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


# ---- parser -----------------------------------------------------------------------------------------------
def _add_bench_run(sub, bench: str) -> None:
    name = {"t2i": "T2I-Bench(-mini)", "edit": "Editing-Bench(-mini)"}[bench]
    p = sub.add_parser(bench, help=f"run {name}: generate with --model, judge, write DIR/results.json",
                       description=f"Run {name} on a model and judge every case. Resumes from DIR/cases.jsonl "
                                   "if interrupted: rerun the same command.")
    p.add_argument("--model", required=True, help="oracle | noise | oracle-blur:S | oracle-noise:S | teacher:base | "
                                                  "teacher:specialized | a model or student folder")
    p.add_argument("--nfe", type=positive_int, default=None,
                   help="sampling steps for network models (default: 50 for teachers; ignored by oracles)")
    p.add_argument("--cfg", type=nonneg_float, default=None, help="CFG scale for teachers (default: the teacher's own)")
    p.add_argument("--judge", choices=("world", "vlm"), default="world", help="world: exact ground truth (default)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N cases of each category")
    p.add_argument("--category", action="append", default=None, metavar="C",
                   help="only the cases of category C (repeat for several; default: all)")
    p.add_argument("--cases", default=None, help="your own JSONL case file (format: flashdistill/bench/cases.py)")
    p.add_argument("--out", required=True, help="output folder (results.json, cases.jsonl, images/, grid.png)")
    p.add_argument("--resolution", type=positive_int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images generated at once (default 32)")
    p.add_argument("--retry-failed", action="store_true",
                   help="judge again the cases this folder recorded as failed (score null), e.g. after a judge outage")
    p.add_argument("--vlm-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--vlm-model", default=None, help="model name at that endpoint")
    p.add_argument("--vlm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--vlm-concurrency", type=positive_int, default=4, help="requests in flight at once")
    p.set_defaults(func=cmd_bench_run, bench=bench)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flashdistill",
        description="Few-step distillation toolkit (Qwen-Image-Flash recipe). Subcommands:\n"
                    "  quickstart  the main job: shipped teachers -> 4-NFE student -> benchmarks -> report\n"
                    "  world   the embedded procedural image world: sample renders, measure legibility\n"
                    "  bench   T2I-Bench / Editing-Bench: run a model, build tables, make case files, calibrate\n"
                    "  judge   train and evaluate the world judge's reader network\n"
                    "  teacher train a base teacher, or specialize one (flow matching, T2I + editing)\n"
                    "  distill DMD distillation into a 4-NFE student from a recipe (configs/flash.yaml)\n"
                    "  study   the paper's three studies: arms x training seeds, tables with 95% CIs, verdicts\n"
                    "  generate / edit   sample images from a teacher or a distilled student\n"
                    "  qwen / cache / plan   Qwen-Image folders: tiny test folders, embedding caches, memory plan",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top = parser.add_subparsers(dest="command", required=True, metavar="{quickstart,world,bench,judge,teacher,distill,study,generate,edit,qwen,cache,plan}")

    p = top.add_parser("quickstart", help="distil the shipped teachers into a 4-NFE student, benchmark it against "
                                          "its teacher, measure speed, write report.md/.html (~15 min on a CPU)",
                       description="The whole system in one command: distillation (quickstart recipe), bench "
                                   "slices for teacher@50, teacher@4 and the student at 4/2/1 NFE, speed, and a "
                                   "report. Ctrl-C and the same command again resume where it stopped.")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    p.add_argument("--preset", default="default", help="default (sized for ~15 min on a 2-core CPU) or tiny "
                                                       "(seconds; a smoke test)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted overrides of the preset's recipe, e.g. teachers.base=runs/teacher_base/teacher")
    p.set_defaults(func=cmd_quickstart)

    world = top.add_parser("world", help="the embedded image world").add_subparsers(dest="sub", required=True)
    p = world.add_parser("sample", help="render N cases of a category with their captions into one PNG")
    p.add_argument("--category", required=True, choices=T2I_CATEGORIES + EDIT_CATEGORIES)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=("train", "bench"), default="train")
    p.add_argument("--start", type=nonneg_int, default=0, help="first item index in the split")
    p.add_argument("--resolution", type=positive_int, default=32)
    p.set_defaults(func=cmd_world_sample)
    p = world.add_parser("legibility", help="measure how legible the text category's words are per resolution")
    p.add_argument("--n", type=positive_int, default=300, help="words per resolution")
    p.add_argument("--resolutions", type=positive_int, nargs="+", default=[16, 32, 48])
    p.set_defaults(func=cmd_world_legibility)

    bench = top.add_parser("bench", help="the benchmarks").add_subparsers(dest="sub", required=True)
    _add_bench_run(bench, "t2i")
    _add_bench_run(bench, "edit")
    p = bench.add_parser("table", help="paper-layout table (Markdown + JSON) from result folders")
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True, help="table.md (table.json is written beside it)")
    p.set_defaults(func=cmd_bench_table)
    p = bench.add_parser("make-cases", help="regenerate a mini bench case file from the bench seeds")
    p.add_argument("--bench", choices=("t2i", "edit"), required=True)
    p.add_argument("--n", type=positive_int, default=None, help="cases per category (default: 200 T2I, 50 edit)")
    p.add_argument("--split", choices=("bench", "val"), default="bench",
                   help="bench: the shipped mini benches' seeds; val: disjoint seeds for tuning settings and "
                        "checkpoints without touching the bench")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bench_make_cases)
    p = bench.add_parser("calibrate", help="run the reference models on both benches and check the judge's bars")
    p.add_argument("--out", default="runs/calibration")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="cases per category (default: the full mini benches)")
    p.add_argument("--models", nargs="+", default=list(CALIBRATION_MODELS))
    p.set_defaults(func=cmd_bench_calibrate)

    judge = top.add_parser("judge", help="the world judge's reader").add_subparsers(dest="sub", required=True)
    p = judge.add_parser("train-reader", help="train the reader network and write safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the shipped reader's)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.set_defaults(func=cmd_judge_train_reader)
    p = judge.add_parser("eval-reader", help="accuracy of the reader on fresh held-out renders: clean, blur 1.0, noise 0.1")
    p.add_argument("--weights", default=None, help="safetensors file (default: the shipped reader)")
    p.add_argument("--n", type=positive_int, default=1000, help="renders per category")
    p.add_argument("--json", default=None, help="also write the results (clean, blur 1.0, noise 0.1) here")
    p.set_defaults(func=cmd_judge_eval_reader)
    teacher = top.add_parser("teacher", help="train teachers (see: flashdistill teacher train --help)")
    tsub = teacher.add_subparsers(dest="sub", required=True)
    tsub.add_parser("train", help="train a base teacher from a YAML config (configs/teacher_base.yaml)",
                    add_help=False)
    tsub.add_parser("specialize", help="fine-tune a base teacher into a specialized one (configs/"
                                       "teacher_specialized.yaml)", add_help=False)

    top.add_parser("distill", help="distill teachers into a few-step student from a recipe (see: flashdistill "
                                   "distill --help)", add_help=False)

    _add_study(top)

    p = top.add_parser("generate", help="text-to-image: one prompt -> PNG")
    p.add_argument("--prompt", required=True)
    _add_sampling_args(p, "generate")
    p.set_defaults(func=cmd_generate)
    p = top.add_parser("edit", help="instruction-guided editing: source PNG + instruction -> PNG")
    p.add_argument("--image", required=True, help="source PNG (resized to the model's resolution)")
    p.add_argument("--instruction", required=True)
    _add_sampling_args(p, "edit into")
    p.set_defaults(func=cmd_edit)

    from flashdistill.commands_qwen import add_commands

    add_commands(top)
    return parser


def os_error_line(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    return one_line(f"{where}{err.strerror or err}")


def _delegated(argv: list[str]):
    """Subcommands whose parser lives beside their code (training entry points); None if argv is not one."""
    if argv[:2] == ["teacher", "train"]:
        from flashdistill.teacher.train import main_train

        return lambda: main_train(argv[2:])
    if argv[:2] == ["teacher", "specialize"]:
        from flashdistill.teacher.specialize import main_specialize

        return lambda: main_specialize(argv[2:])
    if argv[:1] == ["distill"]:
        from flashdistill.distill.trainer import main_distill

        return lambda: main_distill(argv[1:])
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegated(argv)
    if delegated is not None:
        try:
            return delegated()
        except KeyboardInterrupt:
            print("\ninterrupted: rerun the same command with --resume to continue", file=sys.stderr)
            return 130
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the user named cannot be read or written: still one line, not a traceback
        print(f"error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
