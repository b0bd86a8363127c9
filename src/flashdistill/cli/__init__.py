"""The `flashdistill` command. Each subcommand is a thin layer over a library function; `--help` on any of them
explains its options. Bad input ends with one line naming what is wrong and exit code 2.

This package is the only place that builds argparse parsers and turns exceptions into exit codes (`exits.py`).
One module per command group: `world`, `bench`, `judge`, `study` (and quickstart), `sample` (generate, edit),
`qwen` (qwen, cache), `plan`; the training commands parse their own options, and are loaded only when run:
`teacher` (train, specialize, ship) and `distill` (also `python -m flashdistill distill` and under torchrun).
`args.py` holds the parser class and the argument types.
"""

from __future__ import annotations

import argparse
import sys

from flashdistill.cli import bench, judge, pairs, plan, qwen, sample, study, world
from flashdistill.cli.args import Parser
from flashdistill.cli.exits import exit_code, main_rank


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="flashdistill",
        description="Few-step distillation toolkit (Qwen-Image-Flash recipe). Subcommands:\n"
                    "  quickstart  the main job: shipped teachers -> 1-NFE student -> benchmarks -> report\n"
                    "  world   the embedded procedural image world: sample renders, measure legibility\n"
                    "  bench   T2I-Bench / Editing-Bench: run a model, build tables, make case files, calibrate\n"
                    "  judge   train and evaluate the world judge's reader network\n"
                    "  teacher train a base teacher, or specialize one (flow matching, T2I + editing)\n"
                    "  distill DMD distillation into a few-step student from a recipe (configs/flash.yaml)\n"
                    "  pairs   cache the teachers' many-step images for DMD's paired regression (pairs.folder)\n"
                    "  study   the paper's three studies: arms x training seeds, tables with 95% CIs, verdicts\n"
                    "  generate / edit   sample images from a teacher or a distilled student\n"
                    "  qwen / cache / plan   Qwen-Image folders: tiny test folders, embedding caches, memory plan",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top = parser.add_subparsers(dest="command", required=True,
                                metavar="{quickstart,world,bench,judge,teacher,distill,pairs,study,"
                                        "generate,edit,qwen,cache,plan}")
    study.add_quickstart(top)
    world.add_commands(top)
    bench.add_commands(top)
    judge.add_commands(top)
    _add_training(top)
    pairs.add_command(top)
    study.add_study(top)
    sample.add_commands(top)
    qwen.add_commands(top)
    plan.add_command(top)
    return parser


def _add_training(top) -> None:
    """The subcommands whose parser lives in their own module (`_delegated`): listed here for the help."""
    teacher = top.add_parser("teacher", help="train teachers (see: flashdistill teacher train --help)")
    tsub = teacher.add_subparsers(dest="sub", required=True)
    tsub.add_parser("train", help="train a base teacher from a YAML config (configs/teacher_base.yaml)",
                    add_help=False)
    tsub.add_parser("specialize", help="fine-tune a base teacher into a specialized one (configs/"
                                       "teacher_specialized.yaml)", add_help=False)
    tsub.add_parser("ship", help="copy a trained teacher into the package (float16 weights, model card)",
                    add_help=False)

    top.add_parser("distill", help="distill teachers into a few-step student from a recipe (see: flashdistill "
                                   "distill --help)", add_help=False)


RESUME_HINT = "\ninterrupted: rerun the same command with --resume to continue"
RERUN_HINT = "\ninterrupted: rerun the same command to resume"


def _delegated(argv: list[str]):
    """Subcommands that parse their own options: (entry, what to print on Ctrl-C), or None if argv is not one."""
    if argv[:2] == ["teacher", "train"]:
        from flashdistill.cli.teacher import main_train

        return lambda: main_train(argv[2:]), RESUME_HINT
    if argv[:2] == ["teacher", "specialize"]:
        from flashdistill.cli.teacher import main_specialize

        return lambda: main_specialize(argv[2:]), RESUME_HINT
    if argv[:2] == ["teacher", "ship"]:
        from flashdistill.cli.teacher import main_ship

        return lambda: main_ship(argv[2:]), RERUN_HINT
    if argv[:1] == ["distill"]:
        from flashdistill.cli.distill import main_distill

        return lambda: main_distill(argv[1:]), RESUME_HINT
    return None


def main(argv: list[str] | None = None) -> int:
    """The `flashdistill` command (also `python -m flashdistill`): returns its exit code (0 done, 1 diverged or an
    incomplete result, 2 bad input, 130 interrupted; `cli.exits`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    delegated = _delegated(argv)
    if delegated is not None:
        entry, hint = delegated
    else:
        args = build_parser().parse_args(argv)
        entry, hint = (lambda: exit_code(lambda: args.func(args), "distillation")), RERUN_HINT
    try:
        return entry()
    except KeyboardInterrupt:
        if main_rank():  # under torchrun every rank is interrupted: one message
            print(hint, file=sys.stderr)
        return 130
