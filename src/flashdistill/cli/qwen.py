"""The CLI subcommands of the qwen-image family's folders: `qwen tiny-folder`, `qwen random-lora` and `cache`.

`flashdistill.cli.build_parser` calls `add_commands(top)` once; each command is a thin layer over a library
function and reports bad input as a UserError (one line, exit code 2, by `cli.exits`).
"""

from __future__ import annotations

import shlex
import sys

from flashdistill.cli.args import model_text, nonneg_int, positive_float, positive_int, torch_device
from flashdistill.errors import UserError


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
    from flashdistill.models.qwen_image import QwenImageParts, read_model_index
    from flashdistill.runfolder import claim_run

    model, prompts_files, edits_files, out = _cache_inputs(args)
    read_model_index(model)  # a clear error before anything is read or loaded
    prompts = [item for path in prompts_files for item in read_prompts(path)]
    edits = [item for path in edits_files for item in read_edits(path)]
    with claim_run(out, "cache"):  # not into another kind of run's folder, and one writer at a time
        parts = QwenImageParts(model, parts=("text", "vae"), device=args.device)
        counts = build_cache(out, parts, prompts, edits, _cache_command(args, out),
                             negative_prompt=args.negative_prompt, vae_area=args.vae_area, dtype=args.dtype,
                             batch_size=args.batch_size, shard_size=args.shard_size)
    for line in counts["damaged"]:
        print(f"warning: {line}", file=sys.stderr)
    print(f"cache {out}: {counts['prompts']} prompts (negative included), {counts['edits']} edits; encoded "
          f"{counts['encoded']} now, {counts['entries']} entries in all")


def add_commands(top) -> None:
    """Register `qwen` and `cache` on the top-level subparsers `top`."""
    _add_qwen(top)
    _add_cache(top)


def _add_qwen(top) -> None:
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


def _add_cache(top) -> None:
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
    p.add_argument("--negative-prompt", default=" ", type=model_text,
                   help="the negative prompt of true CFG (default: ' ')")
    p.add_argument("--vae-area", type=positive_int, default=1024 * 1024,
                   help="pixel area of a source image at the VAE, aspect kept (default 1024*1024, the pipelines')")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--batch-size", type=positive_int, default=16, help="prompts per text-encoder pass")
    p.add_argument("--shard-size", type=positive_int, default=256,
                   help="entries per shard (a kill loses at most one shard)")
    p.add_argument("--device", type=torch_device, default="cpu", help="cpu | cuda | cuda:N | mps")
    p.set_defaults(func=cmd_cache)
