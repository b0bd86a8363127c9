"""The `distill` subcommand: `flashdistill distill RECIPE --out DIR [--resume] [--set k=v ...]`.

Under `torchrun --standalone --nproc_per_node=N -m flashdistill distill ...` the same command runs on every rank
(see `runtime/dist.py` and `distill/layouts/`); each rank ends with the same exit code and only rank 0 prints.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from flashdistill.bench.quick import make_scorer
from flashdistill.cli.args import Parser
from flashdistill.cli.exits import exit_code, main_rank
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.runtime.dist import destroy_distributed, teardown_distributed
from flashdistill.runtime.inputs import ACCEPT_FLAG


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = Parser(prog=prog, description="Distill teachers into a few-step student with DMD "
                                            "(step-wise multi-teacher guidance, task mixture).")
    parser.add_argument("recipe", metavar="RECIPE", help="distillation recipe YAML (see configs/flash.yaml)")
    parser.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint exactly")
    parser.add_argument(ACCEPT_FLAG, action="store_true", help="with --resume: continue although the teachers' "
                        "weights or the data files differ from the checkpoint's (refused otherwise)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                        help="dotted recipe overrides, e.g. tasks.ratio=7:3 dmd.iterations=200")
    return parser


def main_distill(argv: list[str] | None = None, prog: str = "flashdistill distill") -> int:
    """CLI entry: returns the exit code (0 done, 1 diverged, 2 bad input). Under torchrun each rank ends here with
    that code (roles.teardown_distributed); an uncaught exception still propagates with its traceback."""
    # Before CUDA starts: expandable segments keep fragmentation low as micro-batches of different token counts (T2I
    # and edit rows) come and go: at 20B reserved ran 4-6 % above allocated with it, up to 18 % without
    # (docs/full-scale.md).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    try:
        code = _main_distill(argv, prog)
    except BaseException:
        destroy_distributed()
        raise
    return teardown_distributed(code)


def _main_distill(argv: list[str] | None, prog: str) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return exit_code(lambda: _distill(args, f"{prog} {shlex.join(argv)}"), "distillation")


def _distill(args: argparse.Namespace, command: str) -> None:
    recipe = load_recipe(args.recipe, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / Path(args.recipe).stem
    summary = train_distill(recipe, out, args.resume, command=command, accept_inputs=args.accept_changed_inputs,
                            make_scorer=make_scorer)
    if main_rank():
        best = summary["best_score"]
        print(f"student after {summary['iterations']} iterations ({summary['wall_time_s'] / 60:.1f} min, "
              f"{summary['skipped_total']} skipped) -> {summary['student']}"
              + ("" if best is None else f"; best quick-eval score {best:.3f} at iteration "
                                         f"{summary['best_iteration']} -> {out / 'best'}"))
