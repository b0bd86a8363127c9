"""The `pairs` subcommand: the teachers' many-step images from fixed noises, for DMD's paired regression.

    flashdistill pairs RECIPE --n 4000 --out runs/pairs [--nfe 50] [--cfg W] [--set KEY=VALUE ...]
    torchrun --standalone --nproc_per_node=N -m flashdistill pairs RECIPE ... --set run.parallel=ddp

Then train with `--set pairs.folder=runs/pairs pairs.weight=W`. What a pair is, and the folder's layout:
`flashdistill.distill.pairs`. The same command again samples only what is missing (resume); a larger --n extends.
"""

from __future__ import annotations

import os
import shlex
import sys

from flashdistill.cli.args import nonneg_int, positive_float, positive_int

DESCRIPTION = ("Sample the recipe's teachers (their λ-mix per category, CFG dmd.cfg_scale unless --cfg) from N fixed "
               "noises to t = 0 in --nfe Euler steps on the base teacher's own grid, for `pairs.folder` (DMD's "
               "paired regression). Pairs are items of the recipe's training mix (world items, or your data "
               "files' prompts and edits); noises are regenerated from --seed, only the targets are stored "
               "(float16 safetensors shards, written atomically; the same command resumes).")


def add_command(top) -> None:
    p = top.add_parser("pairs", help="cache the teachers' many-step images for DMD's paired regression",
                       description=DESCRIPTION)
    p.add_argument("recipe", metavar="RECIPE", help="distillation recipe YAML (its teachers, guidance, mix, CFG)")
    p.add_argument("--out", required=True, help="pairs folder (created; an existing one is extended or resumed)")
    p.add_argument("--n", type=positive_int, required=True, help="number of pairs (pairs 0..N-1)")
    p.add_argument("--nfe", type=positive_int, default=50, help="Euler steps of the teachers' ODE (default 50)")
    p.add_argument("--cfg", type=positive_float, default=None, help="CFG scale (default: the recipe's "
                   "dmd.cfg_scale, the real score's)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the pairs' items and noises (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="pairs per teacher batch (default 32)")
    p.add_argument("--shard-size", type=positive_int, default=256, help="pairs per shard file (default 256)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted recipe overrides, e.g. run.device=cuda")
    p.set_defaults(func=cmd_pairs)


def cmd_pairs(args) -> None:
    from flashdistill.distill.pairs_build import build_pairs
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.runfolder import claim_run
    from flashdistill.runtime.dist import destroy_distributed

    recipe = load_recipe(args.recipe, args.overrides)
    command = shlex.join(["flashdistill", "pairs", args.recipe, "--n", str(args.n), "--nfe", str(args.nfe),
                          "--seed", str(args.seed), "--out", args.out]
                         + (["--cfg", str(args.cfg)] if args.cfg is not None else [])
                         + [f"--set={o}" for o in args.overrides])
    main = os.environ.get("RANK", "0") == "0"
    try:
        with claim_run(args.out, "pairs", enabled=main):
            summary = build_pairs(recipe, args.out, args.n, args.nfe, args.cfg, args.batch_size, args.shard_size,
                                  args.seed, command)
    finally:
        destroy_distributed()
    if main:
        print(f"{summary['pairs']} pairs in {summary['folder']} ({summary['sampled']} sampled now, teacher@"
              f"{args.nfe}); train with --set pairs.folder={summary['folder']} pairs.weight=W", file=sys.stdout)
