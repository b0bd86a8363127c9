"""The `teacher` subcommands: `teacher train CONFIG`, `teacher specialize CONFIG` (training that must start from a
base teacher) and `teacher ship RUN/teacher NAME` (copy a trained teacher into the package)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from flashdistill.cli.args import Parser
from flashdistill.cli.exits import exit_code
from flashdistill.errors import UserError
from flashdistill.teacher.config import load_config
from flashdistill.teacher.train import train_teacher


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Train a flow-matching teacher on the embedded world.")
    parser.add_argument("config", metavar="CONFIG", help="teacher YAML (see configs/teacher_*.yaml)")
    parser.add_argument("--out", help="run folder (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint exactly")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="dotted config overrides, e.g. train.steps=200 train.bf16=true")
    return parser


def main_train(argv: list[str] | None = None, prog: str = "flashdistill teacher train",
               require_init: bool = False) -> int:
    """CLI entry: returns the exit code (0 done, 2 bad input, 1 diverged)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return exit_code(lambda: _train(args, f"{prog} {shlex.join(argv)}", require_init), "training")


def main_specialize(argv: list[str] | None = None) -> int:
    return main_train(argv, prog="flashdistill teacher specialize", require_init=True)


def _train(args: argparse.Namespace, command: str, require_init: bool) -> None:
    config = load_config(args.config, args.overrides)
    if require_init and not config.run.init_from:
        raise UserError("run.init_from: specialize needs a base teacher folder to start from")
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    summary = train_teacher(config, out, args.resume, command=command)
    loss = summary["final_loss"]
    print(f"teacher after {summary['steps']} steps (final loss {'n/a' if loss is None else f'{loss:.4f}'}, "
          f"{summary['wall_time_s'] / 60:.1f} min) -> {summary['teacher']}")


def main_ship(argv: list[str] | None = None, prog: str = "flashdistill teacher ship") -> int:
    """CLI entry of `teacher ship`: returns the exit code (0 shipped, 2 bad input)."""
    from flashdistill.models.shipped import TEACHER_NAMES
    from flashdistill.teacher import ship

    parser = Parser(prog=prog, description=ship.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", help="a finished run's teacher folder, e.g. runs/teacher_base/teacher")
    parser.add_argument("name", choices=TEACHER_NAMES)
    parser.add_argument("--cfg", type=float, default=None, help="CFG scale to record as the teacher's default")
    parser.add_argument("--base", default="teacher:base", help="for a LoRA teacher: the shipped base it adapts")
    parser.add_argument("--note", default=None, help="a sentence for the model card (e.g. how the run was timed)")
    args = parser.parse_args(argv)

    def shipped() -> None:
        dest = ship.ship(Path(args.teacher), args.name, args.cfg, base=args.base, note=args.note)
        print(f"shipped teacher:{args.name} -> {dest}")

    return exit_code(shipped, "training")
