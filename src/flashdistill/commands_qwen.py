"""The CLI subcommands of the qwen-image family: `qwen tiny-folder`, `qwen random-lora`, `cache` and `plan`.

`flashdistill.cli.build_parser` calls `add_commands(top)` once; each command is a thin layer over a library
function and reports bad input as a UserError (one line, exit code 2, by the CLI).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from flashdistill.cliargs import nonneg_int, positive_float, positive_int
from flashdistill.errors import UserError
from flashdistill.files import out_file


def cmd_tiny_folder(args) -> None:
    from flashdistill.models.qwen_tiny import KINDS, write_tiny_folder

    out = write_tiny_folder(args.out, args.kind, args.seed)
    print(f"wrote a tiny random {KINDS[args.kind]} folder to {out} (seed {args.seed})")


def cmd_random_lora(args) -> None:
    from flashdistill.models.qwen_tiny import write_random_lora

    out = write_random_lora(args.base, args.out, args.rank, args.std, args.seed)
    print(f"wrote a random rank-{args.rank} LoRA on {args.base} to {out} (diffusers' LoRA format)")


def _cache_inputs(args) -> tuple[str, list[str], list[str], str]:
    """(model folder, prompts files, edits files, out folder) from a recipe and/or the explicit options; a recipe's
    eval.prompts / eval.edits come after its data files (the quick evaluation samples them from the same cache)."""
    model, out = args.model, args.out
    prompts, edits = [args.prompts] if args.prompts else [], [args.edits] if args.edits else []
    if args.recipe:
        from flashdistill.distill.recipe import load_recipe

        recipe = load_recipe(args.recipe, args.overrides)
        for note in recipe.notes:
            print(f"note: {note}", file=sys.stderr)
        model = model or recipe.teachers[recipe.student.init_from]
        prompts = prompts or ([recipe.data.prompts] if recipe.data.prompts else [])
        edits = edits or ([recipe.data.edits] if recipe.data.edits else [])
        out = out or recipe.run.text_cache
        prompts += [recipe.eval.prompts] if recipe.eval.prompts else []
        edits += [recipe.eval.edits] if recipe.eval.edits else []
    if not model:
        raise UserError("cache: name the model: a RECIPE (its student.init_from teacher) or --model FOLDER")
    if not prompts and not edits:
        raise UserError("cache: nothing to encode: give data.prompts / data.edits in the recipe, or --prompts / "
                        "--edits")
    if not out:
        raise UserError("cache: where to write: --out DIR (or run.text_cache in the recipe)")
    return model, prompts, edits, out


def _cache_command(args, out: str) -> str:
    """The command that (re)builds this cache, for error messages of readers."""
    parts = ["flashdistill", "cache"] + ([args.recipe] if args.recipe else [])
    parts += [f"--set={o}" for o in args.overrides]
    for flag in ("model", "prompts", "edits"):
        if getattr(args, flag):
            parts += [f"--{flag}", getattr(args, flag)]
    parts += ["--out", out]
    defaults = {"negative_prompt": " ", "vae_area": 1024 * 1024, "dtype": "bfloat16"}
    for flag, default in defaults.items():  # settings that change the entries: the command must repeat them
        if getattr(args, flag) != default:
            parts += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_cache(args) -> None:
    from flashdistill.data.cache import build_cache
    from flashdistill.data.files import read_edits, read_prompts
    from flashdistill.models.qwen_image import QwenImageFamily, read_model_index
    from flashdistill.runfolder import claim_run

    model, prompts_files, edits_files, out = _cache_inputs(args)
    read_model_index(model)  # a clear error before anything is read or loaded
    prompts = [item for path in prompts_files for item in read_prompts(path)]
    edits = [item for path in edits_files for item in read_edits(path)]
    with claim_run(out, "cache"):  # not into another kind of run's folder, and one writer at a time
        family = QwenImageFamily(model, parts=("text", "vae"), device=args.device)
        counts = build_cache(out, family, prompts, edits, _cache_command(args, out),
                             negative_prompt=args.negative_prompt, vae_area=args.vae_area, dtype=args.dtype,
                             batch_size=args.batch_size, shard_size=args.shard_size)
    for line in counts["damaged"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"cache {out}: {counts['prompts']} prompts (negative included), {counts['edits']} edits; encoded "
          f"{counts['encoded']} now, {counts['entries']} entries in all")


# Bounds of `plan`'s values: beyond them the answer means nothing (fewer bytes per rank than one parameter, a
# table row per teacher by the million) and the tables take minutes to print.
MAX_WORLD_SIZE = 2**20
MAX_TEACHERS = 64
PIXELS_PER_TOKEN = 16  # the VAE's factor 8 times the transformer's 2x2 patches


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

    check_plan_args(args)
    if args.out:
        out_file(args.out)
    config, teachers = plan_spec(args.spec, args.overrides)
    settings = _plan_settings(args, teachers)
    counts = count(meta_transformer(config), args.lora_rank)
    text = render(args.spec, counts, args.world_size, args.lora_rank, settings.teachers, settings.frozen_bytes)
    text += "\n" + peak.render(counts, settings, args.gpu_memory)
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)


def _plan_settings(args, teachers: int):
    """The peak's settings: a recipe's (its roles, batch, micro-batch, task ratio), else the flags' defaults."""
    from dataclasses import replace

    from flashdistill.distill.layouts import peak

    if args.spec.endswith((".yaml", ".yml")):
        from flashdistill.distill.recipe import load_recipe

        settings = peak.settings_from_recipe(load_recipe(args.spec, args.overrides), args.world_size)
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
    return replace(settings, teachers=args.teachers or settings.teachers, frozen_bytes=frozen, work=work,
                   mode=args.mode or settings.mode)


def torch_device(text: str) -> str:
    """An argparse type: a device torch knows (cpu, cuda, cuda:N, mps) that this machine has."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cuda, cuda:N or mps")
    return text


def add_commands(top) -> None:
    """Register `qwen`, `cache` and `plan` on the top-level subparsers `top`."""
    qwen = top.add_parser("qwen", help="Qwen-Image pipeline folders (tiny random ones for tests and trials)")
    sub = qwen.add_subparsers(dest="sub", required=True)
    p = sub.add_parser("tiny-folder", help="write a tiny random-weight diffusers Qwen-Image pipeline folder",
                       description="Write a tiny random-weight pipeline folder in diffusers' layout that "
                                   "QwenImagePipeline / QwenImageEditPipeline / QwenImageEditPlusPipeline "
                                   ".from_pretrained(DIR) load; built offline, seeded, safetensors.")
    p.add_argument("--kind", choices=("t2i", "edit", "edit-plus"), default="t2i",
                   help="t2i: QwenImagePipeline; edit: QwenImageEditPipeline; edit-plus: QwenImageEditPlusPipeline")
    p.add_argument("--out", required=True, help="folder to create (must not hold a pipeline already)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="weight seed: the same seed writes the same weights")
    p.set_defaults(func=cmd_tiny_folder)
    p = sub.add_parser("random-lora", help="write a random LoRA on a pipeline folder's transformer (diffusers' "
                                           "LoRA format): a stand-in specialized teacher for trials")
    p.add_argument("--base", required=True, help="pipeline folder whose transformer the LoRA adapts")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--rank", type=positive_int, default=4)
    p.add_argument("--std", type=positive_float, default=0.05, help="std of the random LoRA matrices")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.set_defaults(func=cmd_random_lora)

    p = top.add_parser("cache", help="encode prompts, the negative prompt and edits (VL embedding + source latents) "
                                     "once into a safetensors cache",
                       description="Encode every prompt of data.prompts, the negative prompt, and for every edit of "
                                   "data.edits the VL embedding of source + instruction (and of source + negative) "
                                   "and the source latents, into safetensors shards keyed by content. Resumable: "
                                   "after Ctrl-C or a kill, the same command encodes only what is missing.")
    p.add_argument("recipe", nargs="?", default=None, help="recipe YAML (teachers, data.prompts, data.edits)")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted overrides of the recipe")
    p.add_argument("--model", default=None, help="Qwen-Image pipeline folder (default: the recipe's "
                                                 "student.init_from teacher)")
    p.add_argument("--prompts", default=None, help="prompts JSONL (default: the recipe's data.prompts)")
    p.add_argument("--edits", default=None, help="edits JSONL (default: the recipe's data.edits)")
    p.add_argument("--out", default=None, help="cache folder (default: the recipe's run.text_cache)")
    p.add_argument("--negative-prompt", default=" ", help="the negative prompt of true CFG (default: ' ')")
    p.add_argument("--vae-area", type=positive_int, default=1024 * 1024,
                   help="pixel area of a source image at the VAE, aspect kept (default 1024*1024, the pipelines')")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per text-encoder pass")
    p.add_argument("--shard-size", type=positive_int, default=256, help="entries per shard (a kill loses at most one shard)")
    p.add_argument("--device", type=torch_device, default="cpu", help="cpu | cuda | cuda:N | mps")
    p.set_defaults(func=cmd_cache)

    p = top.add_parser("plan", help="bytes per rank of every role per role layout, and the predicted peak GPU "
                                    "memory of a DMD iteration (does it fit?)",
                       description="Count the teacher transformer's real parameter shapes on the meta device (no "
                                   "weights needed) and print, per roles.mode, the bytes per rank of every role's "
                                   "weights, gradients and AdamW states under even FSDP sharding; then the predicted "
                                   "peak allocated memory of one DMD iteration per GPU (states + gradients + "
                                   "activations of the largest grad pass, calibrated on measured H200 runs) for "
                                   "micro-batches of 1, 2, 4, 8 rows, and with --gpu-memory whether each fits. "
                                   "SPEC: a recipe YAML (its roles, batch, micro-batch, resolution, task ratio and "
                                   "frozen dtype are used), a pipeline folder, a transformer config.json, "
                                   "teacher:NAME, or qwen-image (the shipped 20B config).")
    p.add_argument("spec", help="recipe.yaml | pipeline folder | config.json | teacher:NAME | qwen-image")
    p.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="extend", nargs="+", default=[],
                   help="dotted overrides of the recipe")
    p.add_argument("--world-size", type=int, default=1, help="ranks the sharded states are split over")
    p.add_argument("--lora-rank", type=int, default=64, help="rank of the student/critic adapters (default 64)")
    p.add_argument("--teachers", type=int, default=None,
                   help=f"distinct teachers, the base included (default: the recipe's, or 1; at most {MAX_TEACHERS})")
    p.add_argument("--mode", choices=["full", "lora", "lora, critic.lora false"], default=None,
                   help="role layout of the peak (default: the recipe's, or lora)")
    p.add_argument("--frozen-dtype", choices=["bf16", "fp32"], default=None,
                   help="dtype of the frozen weights (default: the recipe's roles.frozen_dtype; auto plans as bf16)")
    p.add_argument("--resolution", type=int, default=None, help="target side in pixels, a multiple of 16 "
                                                                 "(default: the recipe's data.resolution, or 1024)")
    p.add_argument("--micro-batch", "--batch-size", dest="micro_batch", type=int, default=None,
                   help="rows per forward/backward on a rank (default: the recipe's dmd.micro_batch, or its "
                        "batch per rank; 1 without a recipe)")
    p.add_argument("--t2i-only", action="store_true", help="no edit rows (tasks.ratio N:0)")
    p.add_argument("--text-tokens", type=int, default=256, help="prompt tokens per T2I row (default 256)")
    p.add_argument("--vl-tokens", type=int, default=512,
                   help="Qwen2.5-VL tokens (source image + instruction) per edit row (default 512)")
    p.add_argument("--gpu-memory", type=float, default=None, help="GiB of one GPU: say whether each peak fits")
    p.add_argument("--out", default=None, help="also write the plan (Markdown) to this file")
    p.set_defaults(func=cmd_plan)
