"""The `world` subcommands: sample renders of a category, measure the text category's legibility, print the rows of
a training batch."""

from __future__ import annotations

from flashdistill.cli.args import nonneg_int, positive_int
from flashdistill.files import out_file
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES


def cmd_world_sample(args) -> None:
    from flashdistill.world.sample import sample_grid

    out_file(args.out)
    sample_grid(args.category, args.n, args.out, args.split, args.start, args.resolution)
    print(f"wrote {args.out}")


def cmd_world_legibility(args) -> None:
    from flashdistill.world.legibility import measure, print_table

    print_table(measure(args.n, tuple(args.resolutions)))


def cmd_world_batch(args) -> None:
    from flashdistill.data.batches import TaskMix, make_batch

    b = make_batch(args.step, args.n, TaskMix(), seed=args.seed)
    for task, cat, text in zip(b.task, b.category, b.texts):
        print(f"{task:5s} {cat:22s} {text}")


def add_commands(top) -> None:
    """Register `world sample` and `world legibility` on the top-level subparsers `top`."""
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
    p = world.add_parser("batch", help="print the rows (task, category, text) of a training batch of the default "
                                       "task mixture")
    p.add_argument("--n", type=positive_int, default=8, help="rows")
    p.add_argument("--step", type=nonneg_int, default=0, help="batch index")
    p.add_argument("--seed", type=nonneg_int, default=0, help="run seed")
    p.set_defaults(func=cmd_world_batch)
