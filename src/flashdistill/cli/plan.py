"""The `plan` subcommand: bytes per rank of every role and the predicted peak memory of a DMD iteration.

`flashdistill.cli.build_parser` calls `add_command(top)` once; bad values are a UserError naming the option (one
line, exit code 2, by `cli.exits`).
"""

from __future__ import annotations

from pathlib import Path

from flashdistill.errors import UserError
from flashdistill.files import out_file

# Bounds of `plan`'s values: beyond them the answer means nothing (fewer bytes per rank than one parameter, a
# table row per teacher by the million) and the tables take minutes to print.
MAX_WORLD_SIZE = 2**20
MAX_TEACHERS = 64
DEFAULT_RANK = 64  # --lora-rank for a model SPEC (a recipe plans its own roles.lora_rank)
PIXELS_PER_TOKEN = 16  # the VAE's factor 8 times the transformer's 2x2 patches
SUMMARY = ("bytes per rank of every role per role layout, and the predicted peak GPU memory of a DMD iteration "
           "(does it fit?)")
DESCRIPTION = (
    "Count the teacher transformer's real parameter shapes on the meta device (no weights needed) and print, per "
    "roles.mode, the bytes per rank of every role's weights, gradients and AdamW states under even FSDP sharding; "
    "then the predicted peak allocated memory of one DMD iteration per GPU (states + gradients + activations of the "
    "largest grad pass, calibrated on measured H200 runs) for micro-batches of 1, 2, 4, 8 rows, and with "
    "--gpu-memory whether each fits. SPEC: a recipe YAML (its roles, batch, micro-batch, resolution, task ratio and "
    "frozen dtype are used), a pipeline folder, a transformer config.json, teacher:NAME, or qwen-image (the shipped "
    "20B config).")


def check_plan_args(args) -> None:
    """`plan`'s numbers: a one-line UserError naming the option for any value that is out of its range."""
    for flag in ("world_size", "lora_rank", "resolution", "micro_batch"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.text_tokens < 0 or args.vl_tokens < 0 or (args.teachers is not None and args.teachers < 1):
        raise UserError("--text-tokens and --vl-tokens must be >= 0 and --teachers >= 1")
    if args.world_size > MAX_WORLD_SIZE:
        raise UserError(f"--world-size {args.world_size}: at most {MAX_WORLD_SIZE:,} ranks")
    if args.teachers is not None and args.teachers > MAX_TEACHERS:
        raise UserError(f"--teachers {args.teachers}: at most {MAX_TEACHERS} distinct teachers")
    if args.resolution is not None and args.resolution % PIXELS_PER_TOKEN:
        raise UserError(f"--resolution {args.resolution}: must be a multiple of {PIXELS_PER_TOKEN} (the VAE's "
                        f"factor 8 x 2x2 patches)")
    if args.gpu_memory is not None and not 0 < args.gpu_memory < 1e6:
        raise UserError(f"--gpu-memory must be a size in GiB, got {args.gpu_memory}")


def cmd_plan(args) -> None:
    from flashdistill.distill.layouts import peak
    from flashdistill.distill.layouts.plan import count, meta_transformer, plan_spec, render
    from flashdistill.models.lora import DEFAULT_TARGETS

    check_plan_args(args)
    if args.out:
        out_file(args.out)
    recipe = _recipe(args)
    config, teachers = plan_spec(args.spec, args.overrides, recipe)
    settings = _plan_settings(args, teachers, recipe)
    rank = args.lora_rank or (recipe.roles.lora_rank if recipe else DEFAULT_RANK)
    counts = count(meta_transformer(config), rank, recipe.roles.targets() if recipe else DEFAULT_TARGETS)
    text = render(args.spec, counts, args.world_size, rank, settings.teachers, settings.frozen_bytes)
    text += "\n" + peak.render(counts, settings, args.gpu_memory)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


def _recipe(args):
    """The recipe SPEC names (its roles.lora_rank and roles.lora_targets are planned), or None for a model."""
    if not args.spec.endswith((".yaml", ".yml")):
        return None
    from flashdistill.distill.recipe import load_recipe

    return load_recipe(args.spec, args.overrides)


def _plan_settings(args, teachers: int, recipe):
    """The peak's settings: a recipe's (its roles, batch, micro-batch, task ratio), else the flags' defaults."""
    from dataclasses import replace

    from flashdistill.distill.layouts import peak

    if recipe is not None:
        settings = peak.settings_from_recipe(recipe, args.world_size)
    else:
        settings = peak.PlanSettings(teachers=teachers, world=args.world_size,
                                     work=peak.Workload(micro_batch=1))
    work = replace(settings.work, text_tokens=args.text_tokens, vl_tokens=args.vl_tokens)
    if args.micro_batch is not None:
        work = replace(work, micro_batch=args.micro_batch)
    if args.resolution is not None:
        work = replace(work, resolution=args.resolution)
    if args.t2i_only:
        work = replace(work, edits=False)
    frozen = settings.frozen_bytes if args.frozen_dtype is None else {"bf16": 2, "fp32": 4}[args.frozen_dtype]
    offload = settings.offload or args.offload
    return replace(settings, teachers=args.teachers or settings.teachers, frozen_bytes=frozen, work=work,
                   mode=args.mode or settings.mode, offload=offload, sharded=settings.sharded or offload)


def add_command(top) -> None:
    """Register `plan` on the top-level subparsers `top`."""
    p = top.add_parser("plan", help=SUMMARY, description=DESCRIPTION)
    p.add_argument("spec", help="recipe.yaml | pipeline folder | config.json | teacher:NAME | qwen-image")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted overrides of the recipe")
    p.add_argument("--world-size", type=int, default=1, help="ranks the sharded states are split over")
    p.add_argument("--lora-rank", type=int, default=None,
                   help=f"rank of the student/critic adapters (default: a recipe's roles.lora_rank, else "
                        f"{DEFAULT_RANK})")
    p.add_argument("--teachers", type=int, default=None,
                   help=f"distinct teachers, the base included (default: the recipe's, or 1; at most {MAX_TEACHERS})")
    p.add_argument("--mode", choices=["full", "lora", "lora, critic.lora false"], default=None,
                   help="role layout of the peak (default: the recipe's, or lora)")
    p.add_argument("--frozen-dtype", choices=["bf16", "fp32"], default=None,
                   help="dtype of the frozen weights (default: the recipe's roles.frozen_dtype; auto plans as bf16)")
    p.add_argument("--resolution", type=int, default=None, help="target side in pixels, a multiple of 16 "
                                                                 "(default: the recipe's data.resolution, or 1024)")
    p.add_argument("--micro-batch", dest="micro_batch", type=int, default=None,
                   help="rows per forward/backward on a rank (default: the recipe's run.micro_batch, or its "
                        "batch per rank; 1 without a recipe). The global batch is the recipe's: --set "
                        "dmd.batch_size=N")
    p.add_argument("--t2i-only", action="store_true", help="no edit rows (tasks.ratio N:0)")
    p.add_argument("--offload", action="store_true",
                   help="run.parallel fsdp with run.fsdp_offload: states and gradients in host memory")
    p.add_argument("--text-tokens", type=int, default=256, help="prompt tokens per T2I row (default 256)")
    p.add_argument("--vl-tokens", type=int, default=512,
                   help="Qwen2.5-VL tokens (source image + instruction) per edit row (default 512)")
    p.add_argument("--gpu-memory", type=float, default=None, help="GiB of one GPU: say whether each peak fits")
    p.add_argument("--out", default=None, help="also write the plan (Markdown) to this file")
    p.set_defaults(func=cmd_plan)
