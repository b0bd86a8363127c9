"""The random stand-ins of benchmarks/gpu_fullsize.py: a pipeline folder that holds only the transformer's config, a
family whose transformer is built with random weights in the frozen dtype on the device, a condition cache of random
tensors of the real shapes, a random LoRA teacher file, and the model-FLOP counter and matmul ceiling it reports
against. Everything else the benchmark runs is the project's own code.

Why the random weights are redrawn at unit scale (`unit_scale`): with PyTorch's default Linear init (kaiming-uniform,
a = sqrt(5): std 1/sqrt(3·fan_in)) every Linear shrinks its input to 58 %; through the timestep MLP and the
modulation that leaves every block's gates near 0.05, so the 60 blocks barely touch the residual stream, the text
barely reaches the image tokens, and the guided and unguided predictions agree to 0.8 % (measured at 60 layers,
4,096 image tokens: `python benchmarks/random_init.py`, benchmarks/results/random_init_cpu.json). The DMD gradient at initialisation is
x0_fake - x0_real, the critic (= the base) against the base with CFG 4, i.e. 3 x that conditional gap: near zero,
and the issue-23 benchmark's generator loss printed 0.0. Redrawn with std 1/sqrt(fan_in) and zero biases (LeCun,
variance-preserving) every layer keeps unit scale: outputs of std ~1 (the flow-matching target eps - x has std ~1.4
for unit data), gates of order 1, and a conditional gap of ~4.5 % at 1024² (7x the default's), so the DMD gradient
is a few percent of the signal, as it is for a trained model early in distillation. Values do not change what the
GPU computes or how fast; they decide whether the student's update is a real one."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import torch

TOKENS = {"text": 120, "negative": 8, "vl": 300}  # what the random cache hands out per row


def tiny_config() -> dict:
    from flashdistill.models.qwen_tiny import transformer_config

    return {**transformer_config(), "_class_name": "QwenImageTransformer2DModel"}


def write_inputs(work: Path, config: dict, rank: int, device: torch.device) -> Path:
    """A pipeline folder with the transformer's config only, prompt and edit files, a random LoRA teacher."""
    from PIL import Image
    from safetensors.torch import save_file

    from flashdistill.models.lora import DEFAULT_TARGETS

    (work / "transformer").mkdir(parents=True, exist_ok=True)
    index = {"_class_name": "QwenImageEditPlusPipeline", "processor": ["transformers", "Qwen2VLProcessor"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
             "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "QwenImageTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKLQwenImage"]}  # only transformer/ is read (its config)
    (work / "model_index.json").write_text(json.dumps(index))
    (work / "transformer" / "config.json").write_text(json.dumps(config))
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"prompt {i} of {c}", "category": c}) + "\n"
                                                for c in ("landscape", "portrait", "text") for i in range(4)))
    Image.new("RGB", (64, 64), (120, 30, 200)).save(work / "src.png")
    (work / "edits.jsonl").write_text("".join(json.dumps({"image": "src.png", "instruction": f"edit {i}",
                                                          "category": c}) + "\n"
                                              for c in ("text_editing", "style") for i in range(4)))
    lora, gen = {}, torch.Generator(device=device).manual_seed(0)
    for name, module in _meta(config).named_modules():
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in DEFAULT_TARGETS):
            a = torch.randn(rank, module.in_features, generator=gen, device=device) * 0.01
            b = torch.randn(module.out_features, rank, generator=gen, device=device) * 0.01
            lora[f"transformer.{name}.lora_A.weight"] = a.to(torch.bfloat16).cpu()
            lora[f"transformer.{name}.lora_B.weight"] = b.to(torch.bfloat16).cpu()
    save_file(lora, str(work / "specialized.safetensors"))
    return work


def _meta(config: dict):
    from diffusers import QwenImageTransformer2DModel

    with torch.device("meta"):
        return QwenImageTransformer2DModel.from_config(config)


def random_family(folder: Path, resolution: int, device: torch.device, seed: int = 0):
    """The qwen-image family on `folder`, with random weights built on the device and a random condition cache."""
    from flashdistill.data.files import read_edits, read_prompts
    from flashdistill.data.sources import FileSource
    from flashdistill.distill.families import QwenImageFolderFamily

    class RandomFolder(QwenImageFolderFamily):
        @staticmethod
        def read_transformer(folder: Path, dtype: torch.dtype):
            from diffusers import QwenImageTransformer2DModel

            config = QwenImageTransformer2DModel.load_config(folder)
            before = torch.get_default_dtype()
            torch.manual_seed(seed)
            torch.set_default_dtype(dtype)  # built in the frozen dtype: no float32 copy of the weights
            try:
                with torch.device(device):
                    return unit_scale(QwenImageTransformer2DModel.from_config(config), seed)
            finally:
                torch.set_default_dtype(before)

        def source(self, recipe, out, encoder, config):
            shape = (config.channels, config.resolution, config.resolution)
            cache = RandomCache(config.joint_attention_dim, config.resolution, seed)
            return FileSource(recipe.task_mix(), recipe.dmd.seed, read_prompts(recipe.data.prompts),
                              read_edits(recipe.data.edits, check_images=False), cache, shape)

    return RandomFolder(folder, (resolution, resolution))


@torch.no_grad()
def unit_scale(transformer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every Linear weight redrawn from N(0, 1/fan_in), every Linear bias zero (see the module docstring)."""
    gen = None
    for module in transformer.modules():
        if isinstance(module, torch.nn.Linear):
            if gen is None:
                gen = torch.Generator(module.weight.device).manual_seed(seed)
            module.weight.normal_(0.0, module.in_features ** -0.5, generator=gen)
            if module.bias is not None:
                module.bias.zero_()
    return transformer


class RandomCache:
    """The ConditionCache's reading API with random tensors of the real shapes, a fixed draw per item (seeded by the
    item's text, as a real cache is keyed by content): the same batch reads the same conditions every time."""

    def __init__(self, width: int, side: int, seed: int):
        self.width, self.side, self.seed = width, side, seed

    def _gen(self, key: str) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + zlib.crc32(key.encode()))

    def _emb(self, keys: list[str], length: int):
        emb = torch.stack([torch.randn(length, self.width, generator=self._gen(k)) * 0.5 for k in keys])
        return emb, torch.ones(len(keys), length, dtype=torch.bool)

    def check_items(self, prompts, edits):
        """Every item is "cached"; all edit sources share the target's latent size."""
        return {(16, self.side, self.side): list(edits)} if edits else {}

    def prompts(self, texts):
        return self._emb(list(texts), TOKENS["text"])

    def negative(self, n):
        e, m = self._emb(["<negative>"], TOKENS["negative"])
        return e.expand(n, -1, -1), m.expand(n, -1)

    def edits(self, items):
        keys = [f"{item.source}|{item.text}" for item in items]
        e, m = self._emb(keys, TOKENS["vl"])
        ne, nm = self._emb([f"<negative>|{k}" for k in keys], TOKENS["vl"] - 20)
        latents = torch.stack([torch.randn(16, self.side, self.side, generator=self._gen(f"<source>|{k}"))
                               for k in keys])
        return {"emb": e, "mask": m, "neg": ne, "neg_mask": nm, "latents": latents}


class FlopCounter:
    """Model FLOPs of every transformer call (see the module docstring), from a forward hook."""

    def __init__(self, transformer):
        blocks = transformer.transformer_blocks
        self.layers, self.width = len(blocks), transformer.config.num_attention_heads * \
            transformer.config.attention_head_dim
        img, txt = 0, 0
        for name, m in blocks[0].named_modules():
            if isinstance(m, torch.nn.Linear) and "_mod" not in name:
                is_txt = name.startswith("txt_") or ".add_" in name or "to_add_out" in name
                txt += m.weight.numel() if is_txt else 0
                img += 0 if is_txt else m.weight.numel()
        self.img, self.txt, self.flops = img * self.layers, txt * self.layers, 0.0
        self.handle = transformer.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, out):
        hidden, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        b, n_img, n_txt = hidden.shape[0], hidden.shape[1], text.shape[1]
        s = n_img + n_txt
        forward = b * (2 * (self.img * n_img + self.txt * n_txt) + 4 * self.layers * self.width * s * s)
        self.flops += forward * (2 if torch.is_grad_enabled() else 1)


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return round(2 * n**3 * reps / (time.perf_counter() - t) / 1e12, 1)
