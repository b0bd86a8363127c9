"""How much a random Qwen-Image transformer's prediction depends on its text, under PyTorch's default init and under
the unit-scale init benchmarks/gpu_fullsize.py uses (`fullsize_random.unit_scale`): why that benchmark redraws its
random weights (see fullsize_random's docstring).

    python benchmarks/random_init.py --out benchmarks/results/random_init_cpu.json      # CPU, ~2-5 min

The transformer has the real depth (60 blocks), head size (128), text width (3584) and token count at 1024² (a
(1, 16, 128, 128) latent: 4,096 image tokens, 120 prompt and 8 negative-prompt tokens), but 4 heads instead of 24,
so it runs on a CPU. At t in {0.9, 0.5, 0.1} it records, through the project's FlowModel and the qwen-image family's
true CFG: the std of the conditional velocity, the conditional gap |v_cond - v_neg| / |v_cond|, and the DMD
gradient at initialisation relative to the signal, |cfg(v_cond, v_neg, 4) - v_cond| / |v_cond| (the critic starts as
the base, the real score is the base with CFG 4: their x0 differ by t times this velocity difference).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fullsize_random import TOKENS, unit_scale  # noqa: E402


def measure(init: str, layers: int, heads: int, side: int, seed: int = 0) -> list[dict]:
    from diffusers import QwenImageTransformer2DModel

    from flashdistill.conditioning import Cond
    from flashdistill.models.mmdit import FlowModel, MMDiTConfig
    from flashdistill.models.qwen_image import QwenImageParts

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(num_layers=layers, num_attention_heads=heads).eval()
    if init == "unit":
        unit_scale(transformer, seed)
    model = FlowModel(MMDiTConfig.from_transformer(transformer, side), transformer)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(1, 16, side, side, generator=gen)
    width = transformer.config.joint_attention_dim
    cond, neg = (Cond(torch.randn(1, n, width, generator=gen) * 0.5, torch.ones(1, n, dtype=torch.bool))
                 for n in (TOKENS["text"], TOKENS["negative"]))
    rows = []
    for t in (0.9, 0.5, 0.1):
        tt = torch.tensor([t])
        with torch.no_grad():
            v_cond, v_neg = model(z, tt, cond), model(z, tt, neg)
            guided = QwenImageParts.cfg(v_cond, v_neg, 4.0)
        rows.append({"t": t, "v_std": v_cond.std().item(),
                     "conditional_gap": ((v_cond - v_neg).norm() / v_cond.norm()).item(),
                     "dmd_gradient_over_signal": ((guided - v_cond).norm() / v_cond.norm()).item()})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=60)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--side", type=int, default=128, help="latent side: 128 is 1024² (4,096 image tokens)")
    args = p.parse_args(argv)
    result = {"command": " ".join(["python", *sys.argv]), "torch": torch.__version__, "layers": args.layers,
              "heads": args.heads, "head_dim": 128, "image_tokens": (args.side // 2) ** 2, "inits": {}}
    for init in ("default", "unit"):
        start = time.perf_counter()
        result["inits"][init] = measure(init, args.layers, args.heads, args.side)
        print(init, json.dumps(result["inits"][init]), f"{time.perf_counter() - start:.0f} s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
