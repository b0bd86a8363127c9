"""The `quickstart` and `study` subcommands: the whole system in one command, and the paper's three studies."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashdistill.cli.args import positive_int


def cmd_quickstart(args) -> None:
    from flashdistill.quickstart import quickstart

    quickstart(Path(args.out), args.preset, args.overrides)


def add_quickstart(top) -> None:
    """Register `quickstart` on the top-level subparsers `top`."""
    p = top.add_parser("quickstart", help="distil the shipped teachers into a 1-NFE student, benchmark it against "
                                          "its teacher, measure speed, write report.md/.html (~15 min on a CPU)",
                       description="The whole system in one command: distillation (quickstart recipe), bench "
                                   "slices for teacher:base at 50, 8, 4, 2 and 1 NFE and the student at its step "
                                   "count K (the recipe's: 1) and below, speed, and a report. Ctrl-C and the same "
                                   "command again resume where it stopped.")
    p.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    p.add_argument("--preset", default="default", help="default (sized for ~15 min on a 2-core CPU) or tiny "
                                                       "(seconds; a smoke test)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted overrides of the preset's recipe, e.g. teachers.base=runs/teacher_base/teacher")
    p.set_defaults(func=cmd_quickstart)


def cmd_study(args) -> None:
    import shlex

    from flashdistill.errors import UserError
    from flashdistill.studies.runner import run_study

    if args.recipe:
        return _own_study(args)
    for flag, given in (("--mix", args.mixes), ("--dry-run", args.dry_run)):
        if given:
            raise UserError(f"{flag}: goes with --recipe (a study on your own model)")
    args.preset = args.preset or "full"
    argv = ["study", args.name, "--seeds", str(args.seeds), "--preset", args.preset, "--out", args.out]
    argv += ["--recipes", args.recipes] if args.recipes else []
    argv += ["--arms", *args.arms] if args.arms else []
    argv += ["--set", *args.overrides] if args.overrides else []
    # a diverged run ends with exit code 1, as `flashdistill distill` gives for one (cli.exits)
    md = run_study(args.name, Path(args.out), args.seeds, args.preset, args.overrides,
                   Path(args.recipes) if args.recipes else None, arms=args.arms,
                   command="flashdistill " + shlex.join(argv))
    print(f"wrote {md}, {md.with_name('study.json')} and {md.with_name('curves.png')}")


def _own_study(args) -> None:
    import shlex

    from flashdistill.errors import UserError
    from flashdistill.studies.own import run_own_study

    if args.recipes:
        raise UserError("--recipes: the arms of a study on your model come from --recipe, not from a folder")
    preset = args.preset or "small"
    argv = ["study", args.name, "--recipe", args.recipe, "--seeds", str(args.seeds), "--preset", preset, "--out",
            args.out, *(["--mix", *args.mixes] if args.mixes else []), *(["--arms", *args.arms] if args.arms else []),
            *(["--set", *args.overrides] if args.overrides else [])]
    md = run_own_study(args.name, Path(args.recipe), Path(args.out), args.seeds, preset, args.overrides,
                       args.mixes, args.arms, "flashdistill " + shlex.join(argv), args.dry_run)
    if md is not None:
        print(f"wrote {md}, {md.with_name('study.json')} and {md.with_name('curves.png')}")


def add_study(top) -> None:
    from flashdistill.studies.own import OWN_PRESETS
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
                    "kept,\nan unfinished one resumes from its checkpoint and its bench from cases.jsonl.\n\n"
                    "On your own model: --recipe RECIPE (e.g. configs/qwen-image-flash.yaml with --set naming your\n"
                    "teachers, data files, eval files, text cache and eval.vlm_base_url / eval.vlm_model). The arms "
                    "are\noverrides of it made from your data: each category of data.prompts alone, all together "
                    "and each\n--mix A+B; base only, specialized directly, your step-wise rows; T2I only, 9:1, 7:3, "
                    "5:5. Each\nrun's final student is judged by the VLM judge on eval.prompts (and eval.edits). "
                    "Presets: small\n(512², rank 16, 300 iterations; the default), full (the recipe's sizes), tiny "
                    "(a smoke test).\nOne line first says what it will cost; --dry-run prints that and the arms and "
                    "runs nothing.")
    p.add_argument("name", choices=list(STUDIES), metavar="STUDY", help=", ".join(STUDIES))
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds per arm (default 3)")
    p.add_argument("--preset", choices=sorted(set(PRESETS) | set(OWN_PRESETS)), default=None,
                   help="embedded world: full (default; sized for ~3 h per study on a 2-core CPU, see docs/studies.md) "
                        "or tiny (seconds; a smoke test). With --recipe: small (default), full or tiny")
    p.add_argument("--recipe", default=None, help="a study on your own model: your recipe (the arms are overrides "
                                                  "of it, made from its data files)")
    p.add_argument("--mix", dest="mixes", nargs="+", default=[], metavar="A+B",
                   help="with --recipe, data-composition: also train on these mixes of your categories")
    p.add_argument("--dry-run", action="store_true", help="with --recipe: print the arms and what the study will "
                                                          "cost, run nothing")
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--recipes", default=None, help="folder of the arms' recipes (default: configs/studies)")
    p.add_argument("--arms", nargs="+", default=None, metavar="ARM",
                   help="run and report only these arms (e.g. e5_mixed; default: every arm); a later run without "
                        "--arms adds the others")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted recipe overrides for every arm, e.g. teachers.base=runs/teacher_base/teacher "
                        "(a teachers.NAME override applies to the arms that name teacher NAME)")
    p.set_defaults(func=cmd_study)
