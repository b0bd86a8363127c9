"""The CLI subcommands of the qwen-image family: `qwen tiny-folder`, `cache` and `plan`.

`flashdistill.cli.build_parser` calls `add_commands(top)` once; each command is a thin layer over a library
function and reports bad input as a UserError (one line, exit code 2, by the CLI).
"""

from __future__ import annotations

from pathlib import Path


def cmd_tiny_folder(args) -> None:
    from flashdistill.models.qwen_tiny import KINDS, write_tiny_folder

    out = write_tiny_folder(args.out, args.kind, args.seed)
    print(f"wrote a tiny random {KINDS[args.kind]} folder to {out} (seed {args.seed})")


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
    p.add_argument("--seed", type=int, default=0, help="weight seed: the same seed writes the same weights")
    p.set_defaults(func=cmd_tiny_folder)
