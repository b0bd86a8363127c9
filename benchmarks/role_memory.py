"""roles.mode lora against full on a tiny Qwen-Image folder: resident bytes counted from the live roles, next to
`flashdistill plan` for the same config.

    python benchmarks/role_memory.py --out benchmarks/results/role_memory.json

Builds a tiny random QwenImageEditPlusPipeline folder (`flashdistill qwen tiny-folder`) and a rank-4 random LoRA
teacher on it (`flashdistill qwen random-lora`), loads configs/qwen-image-flash.yaml on them (rank 4), builds the
roles of each layout, creates AdamW's states, and counts every resident tensor once (distill/layouts/memory.py): frozen
weights, trainable weights, the EMA, AdamW moments. The planner's counts for the same config must equal the live
ones (tests/test_qwen_distill.py holds that); its bytes assume bf16 frozen weights where this CPU run keeps float32.
Writes JSON and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"full": [], "lora": [], "lora, critic.lora false": ["critic.lora=false"]}


def _inputs(tmp: Path) -> list[str]:
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    base = write_tiny_folder(tmp / "base", "edit-plus")
    lora = write_random_lora(base, tmp / "specialized.safetensors", rank=4)
    (tmp / "p.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "category": c}) + "\n"
                                         for i, c in enumerate(("landscape", "portrait", "text"))))
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp / "s.png")
    (tmp / "e.jsonl").write_text(json.dumps({"image": "s.png", "instruction": "make it blue",
                                             "category": "text_editing"}) + "\n")
    return [f"teachers.base={base}", f"teachers.specialized={lora}", f"data.prompts={tmp / 'p.jsonl'}",
            f"data.edits={tmp / 'e.jsonl'}", f"run.text_cache={tmp / 'cache'}", "roles.lora_rank=4", "data.resolution=64",
            "run.device=cpu"]


def measure_modes(sets: list[str]) -> dict:
    from flashdistill.distill.layouts.memory import materialize_optimizer_states, measure, planned
    from flashdistill.distill.layouts.plan import count, meta_transformer, plan_spec
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.distill.layouts.build import build_roles
    from flashdistill.runtime.dist import Dist

    recipe = str(ROOT / "configs" / "qwen-image-flash.yaml")
    config, teachers = plan_spec(recipe, sets)
    counts = count(meta_transformer(config), rank=4)
    out = {"transformer_params": counts.params, "lora_params_rank4": counts.lora_params, "teachers": teachers,
           "modes": {}}
    for mode, extra in MODES.items():
        roles = build_roles(load_recipe(recipe, sets + [f"roles.mode={mode.split(',')[0]}", *extra]), Dist())
        materialize_optimizer_states(roles)
        out["modes"][mode] = {"live": measure(roles).to_dict(), "plan": planned(counts, mode, teachers).to_dict()}
        del roles
    return out


def table(result: dict) -> str:
    lines = ["| roles.mode | frozen | trainable | EMA | AdamW | live total (fp32) | plan total (bf16 frozen) | "
             "counts equal |", "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for mode, r in result["modes"].items():
        live, plan = r["live"], r["plan"]
        kib = [f"{live['bytes'][g] / 1024:,.0f} KiB" for g in ("frozen", "trainable", "ema", "optimizer")]
        lines.append(f"| {mode} | {' | '.join(kib)} | {live['total_bytes'] / 1024:,.0f} KiB | "
                     f"{plan['total_bytes'] / 1024:,.0f} KiB | {'yes' if live['elements'] == plan['elements'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure_modes(_inputs(Path(tmp)))
    text = table(result)
    print(text, end="")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, "table": text}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
