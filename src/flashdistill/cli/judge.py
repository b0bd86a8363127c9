"""The `judge` subcommands: train and evaluate the world judge's reader network."""

from __future__ import annotations

import json
from pathlib import Path

from flashdistill.cli.args import nonneg_int, positive_int
from flashdistill.files import out_file


def cmd_judge_train_reader(args) -> None:
    from flashdistill.bench.reader import train_reader

    out_file(args.out)
    kwargs = {"seed": args.seed, "n_train_per_category": args.n_train, "log_every": args.log_every}
    for name in ("steps", "batch_size"):  # unset: the shipped reader's
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    summary = train_reader(args.out, **kwargs)
    print(json.dumps(summary, indent=2))


def cmd_judge_eval_reader(args) -> None:
    from flashdistill.bench.reader import accuracy_table
    from flashdistill.models.reader import load_reader

    if args.json:
        out_file(args.json, "--json")
    table, results = accuracy_table(load_reader(args.weights), n_per_category=args.n, seed=args.seed)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def add_commands(top) -> None:
    """Register `judge train-reader` and `judge eval-reader` on the top-level subparsers `top`."""
    judge = top.add_parser("judge", help="the world judge's reader").add_subparsers(dest="sub", required=True)
    p = judge.add_parser("train-reader", help="train the reader network and write safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the shipped reader's)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=None, help="renders per step (default: the shipped "
                   "reader's)")
    p.add_argument("--n-train", type=positive_int, default=24000, help="training renders per category")
    p.add_argument("--log-every", type=positive_int, default=250, help="steps between progress lines")
    p.set_defaults(func=cmd_judge_train_reader)
    p = judge.add_parser("eval-reader",
                         help="accuracy of the reader on fresh held-out renders: clean, blur 1.0, noise 0.1")
    p.add_argument("--weights", default=None, help="safetensors file (default: the shipped reader)")
    p.add_argument("--n", type=positive_int, default=1000, help="renders per category")
    p.add_argument("--seed", type=nonneg_int, default=12345, help="seed of the held-out renders")
    p.add_argument("--json", default=None, help="also write the results (clean, blur 1.0, noise 0.1) here")
    p.set_defaults(func=cmd_judge_eval_reader)
