"""The exported Qwen-Image student as clients the project did not write meet it.

- The LoRA file at any `roles.lora_alpha` (= rank, 4x rank, fractional): diffusers' `QwenImagePipeline
  .load_lora_weights` gives the merged transformer's image; ComfyUI's loader convention (read from its public source,
  below) gives the merged transformer's weights; a strength (diffusers' `set_adapters` weight, ComfyUI's
  strength_model) scales the same delta in both; the file holds the EMA adapter and nothing else.
- The plain-diffusers snippet of docs/full-scale.md gives `flashdistill generate`'s PNG byte for byte.

ComfyUI (not installable here) as read in comfyanonymous/ComfyUI: `comfy/lora.py` `model_lora_keys_unet` maps, for a
QwenImage model, `transformer.<module>` to its `diffusion_model.<module>.weight` (its QwenImage model,
`comfy/ldm/qwen_image/model.py`, names these layers as diffusers does); `load_lora` reads alpha only from a
`<module>.alpha` tensor (None when absent) and logs every key it did not consume; `comfy/weight_adapter/lora.py`
takes `<module>.lora_B.weight` as up and `lora_A.weight` as down, and patches
`weight += strength * (alpha / rank if alpha is not None else 1.0) * up @ down`, rank = down's rows.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.recipe import load_recipe
from flashdistill.runtime.dist import Dist

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
RANK = 4
ALPHAS = {"alpha=rank": None, "alpha=4rank": 16.0, "alpha=6.5": 6.5}
PROMPT = "a sign that reads OPEN"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny QwenImagePipeline folder, its random LoRA teacher and a prompts file: the recipe's --set."""
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    root = tmp_path_factory.mktemp("qwen-export")
    folder = write_tiny_folder(root / "base", "t2i")
    lora = write_random_lora(folder, root / "specialized.safetensors", rank=RANK)
    (root / "p.jsonl").write_text(json.dumps({"prompt": PROMPT, "category": "text"}) + "\n")
    sets = [f"teachers.base={folder}", f"teachers.specialized={lora}", f"data.prompts={root / 'p.jsonl'}",
            f"run.text_cache={root / 'cache'}", "data.resolution=64", "tasks.ratio=1:0",
            f"roles.lora_rank={RANK}", "dmd.bf16=false", "run.device=cpu"]
    return folder, sets


@pytest.fixture(scope="module")
def exports(base, tmp_path_factory):
    """alpha label -> (export folder, {adapter: its tensors}): the roles' student, critic and EMA adapters are given
    different random values (as training would leave them), then the family's export writes the student."""
    folder, sets = base
    out = {}
    for label, alpha in ALPHAS.items():
        recipe = load_recipe(RECIPE, sets + ([f"roles.lora_alpha={alpha}"] if alpha else []))
        roles = build_roles(recipe, Dist())
        shared = roles.ema.base
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for adapter in ("student", "critic", "ema"):
                for _, p in shared.adapter_params[adapter]:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        tensors = {a: {n: p.detach().clone() for n, p in shared.adapter_params[a]} for a in ("student", "ema")}
        dest = tmp_path_factory.mktemp(label) / "student"
        roles.family.export(roles, dest, recipe.timesteps, {"iteration": 0})
        out[label] = dest, tensors
    return out


def _pipe(base_folder: Path, student: Path, merged: bool):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

    kwargs = {"transformer": QwenImageTransformer2DModel.from_pretrained(student / "transformer")} if merged else {}
    pipe = QwenImagePipeline.from_pretrained(base_folder, scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
        student / "scheduler"), **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if not merged:
        pipe.load_lora_weights(student, adapter_name="student")  # diffusers' own LoRA loader
    return pipe


def _image(pipe, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    return pipe(PROMPT, height=64, width=64, num_inference_steps=4, true_cfg_scale=1.0, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images[0]


def comfy_patch(lora: dict, base_weights: dict, strength: float = 1.0) -> tuple[dict, set]:
    """The base transformer's weights as ComfyUI patches them with `lora` (module docstring), and the LoRA keys it
    would leave unloaded."""
    key_map = {f"transformer.{k[:-len('.weight')]}": k for k in base_weights if k.endswith(".weight")}
    patched, loaded = dict(base_weights), set()
    for x, target in key_map.items():
        up, down = f"{x}.lora_B.weight", f"{x}.lora_A.weight"
        if up not in lora:
            continue
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        loaded |= {up, down} | ({f"{x}.alpha"} if alpha is not None else set())
        scale = alpha / lora[down].shape[0] if alpha is not None else 1.0
        patched[target] = base_weights[target] + (strength * scale) * (lora[up].double() @ lora[down].double())
    return patched, set(lora) - loaded


@pytest.mark.parametrize("label", list(ALPHAS))
def test_diffusers_load_lora_weights_gives_the_merged_transformers_image(base, exports, label):
    student, _ = exports[label]
    pipe = _pipe(base[0], student, merged=False)
    via_lora, via_merged = _image(pipe), _image(_pipe(base[0], student, merged=True))
    assert np.abs(via_lora - via_merged).max() <= 1e-4
    pipe.disable_lora()
    assert np.abs(_image(pipe) - via_merged).max() > 1e-2  # the student is not the base: a wrong scale would show


@pytest.mark.parametrize("label", list(ALPHAS))
def test_the_file_is_what_comfyuis_loader_reads_at_the_trained_strength(base, exports, label):
    from diffusers import QwenImageTransformer2DModel

    student, tensors = exports[label]
    lora = load_file(str(student / "pytorch_lora_weights.safetensors"))
    base_weights = {k: v.double() for k, v in load_file(str(base[0] / "transformer" /
                                                             "diffusion_pytorch_model.safetensors")).items()}
    merged = QwenImageTransformer2DModel.from_pretrained(student / "transformer").state_dict()
    patched, unloaded = comfy_patch(lora, base_weights)
    assert not unloaded and not any(k.endswith(".alpha") for k in lora)  # every key consumed, no alpha tensor
    changed = [k for k in base_weights if not torch.equal(patched[k], base_weights[k])]
    targets = load_recipe(RECIPE, base[1]).roles.targets()  # the recipe's (the blocks' modulation among them)
    assert len(changed) == len(lora) // 2 == 2 * len(targets)  # each target in the 2 blocks, patched once
    for key in base_weights:
        assert torch.allclose(patched[key].float(), merged[key], atol=1e-6), key
    # only the EMA adapter is written: its lora_A as it is, its lora_B times alpha / rank; not the student's
    scale = (ALPHAS[label] or RANK) / RANK
    assert set(lora) == {f"transformer.{name}" for name in tensors["ema"]}
    for name, value in tensors["ema"].items():
        assert torch.equal(lora[f"transformer.{name}"], value * scale if ".lora_B." in name else value), name
        assert not torch.equal(lora[f"transformer.{name}"], tensors["student"][name] * scale)


def test_a_strength_scales_the_same_delta_in_diffusers_and_comfyui(base, exports):
    """A user's strength 0.5: diffusers' `set_adapters(name, 0.5)` and ComfyUI's strength_model 0.5 on the file
    give the same transformer, halfway between the base and the student, at alpha != rank."""
    from diffusers import QwenImageTransformer2DModel

    from flashdistill.conditioning import Cond
    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    student, _ = exports["alpha=4rank"]
    pipe = _pipe(base[0], student, merged=False)
    pipe.set_adapters(["student"], adapter_weights=[0.5])
    lora = load_file(str(student / "pytorch_lora_weights.safetensors"))
    base_weights = {k: v.double() for k, v in QwenImageTransformer2DModel.from_pretrained(
        base[0] / "transformer").state_dict().items()}
    comfy = QwenImageTransformer2DModel.from_pretrained(base[0] / "transformer")
    comfy.load_state_dict({k: v.float() for k, v in comfy_patch(lora, base_weights, 0.5)[0].items()})
    merged = QwenImageTransformer2DModel.from_pretrained(student / "transformer")
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(1, 16, 8, 8, generator=g), torch.tensor([0.7])
    cond = Cond(torch.randn(1, 5, 32, generator=g), torch.ones(1, 5, dtype=torch.bool))
    with torch.no_grad():
        v_diffusers, v_comfy, v_full = (FlowModel(MMDiTConfig.from_transformer(tr, 8), tr.eval())(z, t, cond)
                                        for tr in (pipe.transformer, comfy, merged))
    assert torch.allclose(v_diffusers, v_comfy, atol=1e-5)
    assert (v_diffusers - v_full).abs().max() > 1e-3  # half strength is not full strength


def test_the_header_says_scale_one_to_diffusers(base, exports):
    """The metadata diffusers reads first (`lora_adapter_metadata`) states what the folded weights need."""
    student, _ = exports["alpha=6.5"]
    with safe_open(str(student / "pytorch_lora_weights.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.r"] == meta["transformer.lora_alpha"] == RANK
    assert len(meta["transformer.target_modules"]) == 2 * len(load_recipe(RECIPE, base[1]).roles.targets())


def docs_snippet() -> str:
    """The plain-diffusers snippet of docs/full-scale.md (the indented block that starts with `import torch`)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "full-scale.md").read_text(encoding="utf-8")
    start = text.index("    import torch\n    from diffusers import FlowMatchEulerDiscreteScheduler")
    end = re.compile(r"\n\n(?! )").search(text, start).start()  # the first paragraph that is not indented
    return "\n".join(line[4:] for line in text[start:end].splitlines())


def test_the_docs_snippet_gives_generates_png_exactly(base, exports, tmp_path):
    """The snippet of docs/full-scale.md, run as written (paths and the tiny size substituted), against
    `flashdistill generate`: the same PNG; without its torch.manual_seed line the image changes from call to call."""
    from PIL import Image

    from flashdistill.cli import main

    student, _ = exports["alpha=4rank"]
    assert main(["generate", "--model", str(student), "--prompt", PROMPT, "--seed", "0",
                 "--out", str(tmp_path / "generate.png")]) == 0
    code = docs_snippet()
    for old, new in (('"runs/flash/student"', repr(str(student))), ("height=1024, width=1024", "height=64, width=64"),
                     ('"open.png"', repr(str(tmp_path / "snippet.png")))):
        assert old in code
        code = code.replace(old, new)
    exec(compile(code, "docs/full-scale.md snippet", "exec"), {"BASE": str(base[0])})
    pixels = [np.asarray(Image.open(tmp_path / name)) for name in ("generate.png", "snippet.png")]
    assert pixels[0].shape == (64, 64, 3) and np.array_equal(pixels[0], pixels[1])
    unseeded = code.replace("torch.manual_seed(seed)", "torch.randn(7)")  # the global generator wherever it is
    exec(compile(unseeded, "docs/full-scale.md snippet, unseeded", "exec"), {"BASE": str(base[0])})
    off = np.abs(np.asarray(Image.open(tmp_path / "snippet.png")).astype(int) - pixels[0]).max()
    assert off > 10, off
