"""The `generate` and `edit` subcommands: sample images from a teacher or a distilled student."""

from __future__ import annotations

from pathlib import Path

from flashdistill.cli.args import image_size, model_text, nonneg_float, nonneg_int, positive_int
from flashdistill.errors import UserError
from flashdistill.files import out_file

DEFAULT_RESOLUTION = 32  # the embedded world's side


def _pipeline(args):
    from flashdistill.bench.models import load_model

    side = args.resolution if isinstance(args.resolution, int) else None  # HxW: a Qwen-Image student's only
    model = load_model(args.model, side or DEFAULT_RESOLUTION, args.cfg)
    if not hasattr(model, "sample"):
        raise UserError(f"--model {args.model} is a reference model of the benchmarks; generate needs a network "
                        f"(teacher:base, teacher:specialized or a model folder)")
    if isinstance(args.resolution, tuple) and not hasattr(model, "set_resolution"):
        raise UserError(f"--resolution {_shown(args.resolution)}: {args.model} samples squares only; give one side "
                        f"(--resolution N)")
    _student_flags(model, args)
    return model


def _student_flags(model, args) -> None:
    """--cfg and --resolution on a distilled student: refused or honoured, never ignored."""
    spec = getattr(model, "spec", None)
    if getattr(model, "timesteps", None) is None and getattr(spec, "timesteps", None) is None:
        return  # a teacher: load_model applied both
    if args.cfg is not None:
        raise UserError(f"--cfg {args.cfg:g}: {args.model} is a distilled student, which samples without guidance "
                        f"(DMD trained it on the guided teachers' outputs); --cfg applies to teachers")
    if args.resolution is not None and args.resolution != model.resolution:
        if not hasattr(model, "set_resolution"):
            raise UserError(f"--resolution {_shown(args.resolution)}: {args.model} works at {model.resolution} px "
                            f"only")
        # a Qwen-Image student: the pipelines take any multiple of 16
        model.set_resolution(args.resolution, f"--resolution {_shown(args.resolution)}: a Qwen-Image student's size")


def _shown(size) -> str:
    return "x".join(map(str, size)) if isinstance(size, tuple) else str(size)


def _save_outputs(images, out: str, seeds: list[int]) -> None:
    from flashdistill.imageio import save_png

    path = Path(out)
    if len(images) == 1:
        save_png(path, images[0])
        print(f"wrote {path}")
        return
    for img, seed in zip(images, seeds):
        save_png(path.with_name(f"{path.stem}-seed{seed}{path.suffix}"), img)
    print(f"wrote {len(images)} images {path.with_name(path.stem + '-seed*' + path.suffix)}")


def cmd_generate(args) -> None:
    out_file(args.out)
    model = _pipeline(args)
    seeds = [args.seed + i for i in range(args.n)]
    images = model.sample([args.prompt] * args.n, [None] * args.n, seeds, args.nfe)
    _save_outputs(images, args.out, seeds)


def cmd_edit(args) -> None:
    from flashdistill.imageio import load_png

    out_file(args.out)
    load_png(args.image, what="--image")  # readable before any model is loaded
    model = _pipeline(args)
    # resized to the model's side, unless the model resizes sources itself (a Qwen-Image student: aspect kept)
    source = load_png(args.image, getattr(model, "source_side", model.resolution), what="--image")
    if hasattr(model, "check_source"):  # one the pipeline cannot resize (4000x1) is refused, naming the file
        model.check_source((source.shape[1], source.shape[0]), f"--image {args.image}")
    seeds = [args.seed + i for i in range(args.n)]
    images = model.sample([args.instruction] * args.n, [source] * args.n, seeds, args.nfe)
    _save_outputs(images, args.out, seeds)


def _add_sampling_args(p, what: str) -> None:
    p.add_argument("--model", required=True, help="teacher:base | teacher:specialized | a model or student folder")
    p.add_argument("--nfe", type=positive_int, default=None,
                   help="sampling steps (default: 50 for teachers, the schedule's 4 for students); with CFG each "
                        "teacher step costs two network passes")
    p.add_argument("--cfg", type=nonneg_float, default=None,
                   help="classifier-free guidance scale for teachers (default: the one the teacher records); a "
                        "distilled student samples unguided and refuses it")
    p.add_argument("--seed", type=nonneg_int, default=0, help="noise seed: the same seed gives the same image")
    p.add_argument("--n", type=positive_int, default=1, help=f"{what} this many images, seeds S, S+1, ...")
    p.add_argument("--out", required=True, help="PNG path (with --n > 1: PATH-seedS.png per image)")
    p.add_argument("--resolution", type=image_size, default=None,
                   help=f"the model's resolution (default: a student's own, {DEFAULT_RESOLUTION} for teachers); a "
                        f"Qwen-Image student samples at any multiple of 16, square (N) or HEIGHTxWIDTH")


def add_commands(top) -> None:
    """Register `generate` and `edit` on the top-level subparsers `top`."""
    p = top.add_parser("generate", help="text-to-image: one prompt -> PNG")
    p.add_argument("--prompt", required=True, type=model_text)
    _add_sampling_args(p, "generate")
    p.set_defaults(func=cmd_generate)
    p = top.add_parser("edit", help="instruction-guided editing: source PNG + instruction -> PNG")
    p.add_argument("--image", required=True, help="source PNG (resized to the model's resolution; a Qwen-Image "
                   "student's pipeline resizes it itself, aspect kept)")
    p.add_argument("--instruction", required=True, type=model_text)
    _add_sampling_args(p, "edit into")
    p.set_defaults(func=cmd_edit)
