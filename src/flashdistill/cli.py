"""The `flashdistill` command. Each subcommand is a thin layer over a library function; `--help` on any of them
explains its options. Bad input ends with one line naming what is wrong and exit code 2."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES

DATA = Path(__file__).parent / "bench" / "data"
BUILTIN_CASES = {"t2i": DATA / "t2i_mini.jsonl", "edit": DATA / "edit_mini.jsonl"}
MINI_SIZES = {"t2i": 200, "edit": 50}  # per category: the paper's 600 and 250, scaled down
CALIBRATION_MODELS = ("oracle", "oracle-blur:0.5", "oracle-blur:1", "oracle-blur:2", "oracle-noise:0.05",
                      "oracle-noise:0.1", "oracle-noise:0.2", "noise")


# ---- world ------------------------------------------------------------------------------------------------
def cmd_world_sample(args) -> None:
    from flashdistill.world.sample import sample_grid

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


def cmd_bench_run(args) -> None:
    from flashdistill.bench.cases import load_cases
    from flashdistill.bench.models import load_model
    from flashdistill.bench.runner import run_bench

    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    cases_file = Path(args.cases) if args.cases else BUILTIN_CASES[args.bench]
    cases = load_cases(cases_file, args.bench, args.limit)
    label = str(cases_file) if args.cases else f"builtin:{cases_file.name}"
    results = run_bench(args.bench, load_model(args.model, args.resolution), _judge(args, args.resolution), cases,
                        Path(args.out), args.nfe, label, args.resolution, args.batch_size)
    print(f"{results['bench']} {results['model']}: average {results['average']} over {results['n_cases']} cases "
          f"({results['n_failed']} failed) -> {Path(args.out) / 'results.json'}")


def cmd_bench_table(args) -> None:
    from flashdistill.bench.table import write_table

    rows = write_table(args.folders, args.out)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} ({len(rows)} rows)")


def cmd_bench_make_cases(args) -> None:
    from flashdistill.bench.cases import write_cases
    from flashdistill.world.pools import edit_bench_cases, t2i_bench_cases

    n = args.n or MINI_SIZES[args.bench]
    cases = t2i_bench_cases(n) if args.bench == "t2i" else edit_bench_cases(n)
    write_cases(args.out, cases)
    print(f"wrote {len(cases)} cases to {args.out}")


def cmd_bench_calibrate(args) -> None:
    from flashdistill.bench.calibrate import calibrate

    ok = calibrate(Path(args.out), args.models, args.limit)
    if not ok:
        sys.exit(1)


# ---- judge ------------------------------------------------------------------------------------------------
def cmd_judge_train_reader(args) -> None:
    from flashdistill.bench.reader import train_reader

    kwargs = {"seed": args.seed}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    summary = train_reader(args.out, **kwargs)
    print(json.dumps(summary, indent=2))


def cmd_judge_eval_reader(args) -> None:
    from flashdistill.bench.reader import evaluate_reader, load_reader

    report = evaluate_reader(load_reader(args.weights), n_per_category=args.n)
    import json

    print(json.dumps(report, indent=2))


# ---- parser -----------------------------------------------------------------------------------------------
def _add_bench_run(sub, bench: str) -> None:
    name = {"t2i": "T2I-Bench(-mini)", "edit": "Editing-Bench(-mini)"}[bench]
    p = sub.add_parser(bench, help=f"run {name}: generate with --model, judge, write DIR/results.json",
                       description=f"Run {name} on a model and judge every case. Resumes from DIR/cases.jsonl "
                                   "if interrupted: rerun the same command.")
    p.add_argument("--model", required=True, help="oracle | noise | oracle-blur:S | oracle-noise:S")
    p.add_argument("--nfe", type=int, default=None, help="sampling steps for network models (ignored by oracles)")
    p.add_argument("--judge", choices=("world", "vlm"), default="world", help="world: exact ground truth (default)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases of each category")
    p.add_argument("--cases", default=None, help="your own JSONL case file (format: flashdistill/bench/cases.py)")
    p.add_argument("--out", required=True, help="output folder (results.json, cases.jsonl, images/, grid.png)")
    p.add_argument("--resolution", type=int, default=32, help="image size in pixels (default 32)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vlm-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--vlm-model", default=None, help="model name at that endpoint")
    p.add_argument("--vlm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--vlm-concurrency", type=int, default=4, help="requests in flight at once")
    p.set_defaults(func=cmd_bench_run, bench=bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flashdistill",
        description="Few-step distillation toolkit (Qwen-Image-Flash recipe). Subcommands:\n"
                    "  world   the embedded procedural image world: sample renders, measure legibility\n"
                    "  bench   T2I-Bench / Editing-Bench: run a model, build tables, make case files, calibrate\n"
                    "  judge   train and evaluate the world judge's reader network",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top = parser.add_subparsers(dest="command", required=True, metavar="{world,bench,judge}")

    world = top.add_parser("world", help="the embedded image world").add_subparsers(dest="sub", required=True)
    p = world.add_parser("sample", help="render N cases of a category with their captions into one PNG")
    p.add_argument("--category", required=True, choices=T2I_CATEGORIES + EDIT_CATEGORIES)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=("train", "bench"), default="train")
    p.add_argument("--start", type=int, default=0, help="first item index in the split")
    p.add_argument("--resolution", type=int, default=32)
    p.set_defaults(func=cmd_world_sample)
    p = world.add_parser("legibility", help="measure how legible the text category's words are per resolution")
    p.add_argument("--n", type=int, default=300, help="words per resolution")
    p.add_argument("--resolutions", type=int, nargs="+", default=[16, 32, 48])
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
    p.add_argument("--n", type=int, default=None, help="cases per category (default: 200 T2I, 50 edit)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_bench_make_cases)
    p = bench.add_parser("calibrate", help="run the reference models on both benches and check the judge's bars")
    p.add_argument("--out", default="runs/calibration")
    p.add_argument("--limit", type=int, default=None, help="cases per category (default: the full mini benches)")
    p.add_argument("--models", nargs="+", default=list(CALIBRATION_MODELS))
    p.set_defaults(func=cmd_bench_calibrate)

    judge = top.add_parser("judge", help="the world judge's reader").add_subparsers(dest="sub", required=True)
    p = judge.add_parser("train-reader", help="train the reader network and write safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped reader's)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_judge_train_reader)
    p = judge.add_parser("eval-reader", help="accuracy of the reader on fresh held-out renders")
    p.add_argument("--weights", default=None, help="safetensors file (default: the shipped reader)")
    p.add_argument("--n", type=int, default=1000, help="renders per category")
    p.set_defaults(func=cmd_judge_eval_reader)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
