"""The `bench` subcommands: run T2I-Bench / Editing-Bench on a model, build tables, make case files, calibrate."""

from __future__ import annotations

import sys
from pathlib import Path

from flashdistill.bench.cases import BUILTIN_CASES, MINI_SIZES
from flashdistill.cli.args import nonneg_float, positive_int
from flashdistill.errors import Incomplete, UserError
from flashdistill.files import out_dir, out_file
from flashdistill.runfolder import check_run
from flashdistill.world.categories import EDIT_CATEGORIES, T2I_CATEGORIES

CALIBRATION_MODELS = ("oracle", "oracle-blur:0.5", "oracle-blur:1", "oracle-blur:2", "oracle-noise:0.05",
                      "oracle-noise:0.1", "oracle-noise:0.2", "noise")


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
        # Exit 1, not 2: the command was valid (a key, model or URL the endpoint refuses outright is a UserError
        # before any case, vlm.py), but the judge failed at run time (down, 5xx, replies it cannot parse), so the
        # result is incomplete and --retry-failed completes it, as --resume continues a diverged run (cli/exits.py)
        raise Incomplete(f"every case of {', '.join(results['unscored_categories'])} failed, so the bench has no "
                         f"average (first error: {_first_case_error(Path(args.out) / 'cases.jsonl')}); see "
                         f"{Path(args.out) / 'cases.jsonl'}, then rerun with --retry-failed")


def cmd_bench_table(args) -> None:
    from flashdistill.bench.table import write_table

    out_file(args.out)
    rows = write_table(args.folders, args.out)
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.json')} ({len(rows)} rows)")


def cmd_bench_curve(args) -> None:
    from flashdistill.bench.curve import curve_table, nfe_points, plot_nfe_curve, read_results

    out_file(args.out)
    curves = nfe_points(read_results(args.folders))
    plot_nfe_curve(curves, Path(args.out), args.title)
    print("\n".join(curve_table(curves)))
    print(f"wrote {args.out}")


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


def add_commands(top) -> None:
    """Register `bench t2i|edit|table|curve|make-cases|calibrate` on the top-level subparsers `top`."""
    bench = top.add_parser("bench", help="the benchmarks").add_subparsers(dest="sub", required=True)
    _add_bench_run(bench, "t2i")
    _add_bench_run(bench, "edit")
    p = bench.add_parser("table", help="paper-layout table (Markdown + JSON) from result folders")
    p.add_argument("folders", nargs="+")
    p.add_argument("--out", required=True, help="table.md (table.json is written beside it)")
    p.set_defaults(func=cmd_bench_table)
    p = bench.add_parser("curve", help="plot score (and Fréchet distance) against NFE from result folders")
    p.add_argument("folders", nargs="+", help="bench result folders (or results.json files); the curve is the "
                   "model label before @ (teacher@50 -> teacher), or NAME given as NAME=FOLDER")
    p.add_argument("--out", required=True, help="the figure (.png)")
    p.add_argument("--title", default="", help="a title over the panels")
    p.set_defaults(func=cmd_bench_curve)
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
