"""Tiny random-weight Qwen-Image pipeline folders in diffusers' exact layout, built offline: proof without downloads.

`write_tiny_folder(out, kind, seed)` writes what `QwenImagePipeline` (kind `t2i`), `QwenImageEditPipeline` (`edit`)
or `QwenImageEditPlusPipeline` (`edit-plus`) read with `from_pretrained(out)`:

    model_index.json                    pipeline class + one [library, class] pair per component
    scheduler/scheduler_config.json     FlowMatchEulerDiscreteScheduler, Qwen-Image's dynamic-shift settings
    transformer/                        QwenImageTransformer2DModel, 2 layers, in 64 / out 16 (the real channel layout)
    vae/                                AutoencoderKLQwenImage, z_dim 16, 8x spatial, base_dim 4, random
                                        latents_mean/std
    text_encoder/                       Qwen2_5_VLForConditionalGeneration, hidden 32, 2 layers, tiny vision tower
    tokenizer/                          Qwen2Tokenizer: 256 byte-level symbols, no merges, Qwen's special tokens
    processor/                          (edit kinds) Qwen2VLProcessor files: the tokenizer + image/video processor
                                        configs, with small pixel budgets so the VL sees a handful of patches

Everything is safetensors, seeded and deterministic (same seed -> same bytes of weights).

The tokenizer is built offline with the `tokenizers` byte-level alphabet: every byte is one symbol, so any text
tokenizes (one token per byte) and decodes back exactly; the special tokens get the ids right after the 256 bytes,
and the text encoder's config names the same ids (`image_token_id`, `vision_start_token_id`, ...), which the VL model
uses to find where image features go.

The processor: transformers' `Qwen2VLProcessor` needs a video processor, and its only video processor class needs
torchvision. Where torchvision works, `from_pretrained(out)` loads the processor folder as written. Where it does not
(the CPU torch wheel has no matching torchvision on PyPI), `load_processor(folder)` builds the same processor from the
same files with the PIL image processor and a video processor that refuses videos (the pipelines never pass videos),
and callers hand it to `from_pretrained(out, processor=...)`; `flashdistill.models.qwen_image` does so.

CLI: `flashdistill qwen tiny-folder --kind t2i|edit|edit-plus --out DIR [--seed N]`.
Tests: `pytest tests/test_qwen_tiny.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flashdistill.errors import UserError

KINDS = {"t2i": "QwenImagePipeline", "edit": "QwenImageEditPipeline", "edit-plus": "QwenImageEditPlusPipeline"}
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")
TEXT_DIM = 32  # tiny Qwen2.5-VL hidden size = the transformer's joint_attention_dim
VOCAB = 320  # >= 256 bytes + 7 special tokens
# A small VL pixel budget: images become 2x2..4x4 merged patches (the real one allows up to 1280 28px-patches).
VL_MIN_PIXELS, VL_MAX_PIXELS = 28 * 28, 56 * 56


def transformer_config() -> dict:
    """2 layers, 2 heads x 16; 16 latent channels packed 2x2 (in 64, out 16) as in Qwen-Image."""
    return dict(patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16,
                num_attention_heads=2, joint_attention_dim=TEXT_DIM, guidance_embeds=False, axes_dims_rope=(4, 6, 6))


def vae_config(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    mean = (torch.randn(16, generator=g) * 0.5).tolist()
    std = (0.5 + torch.rand(16, generator=g) * 1.5).tolist()
    return dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True], latents_mean=[round(m, 4) for m in mean],
                latents_std=[round(s, 4) for s in std])


def scheduler_config() -> dict:
    """Qwen-Image's published scheduler settings (dynamic exponential shift on the image sequence length)."""
    return dict(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
                shift=1.0, shift_terminal=0.02, stochastic_sampling=False, time_shift_type="exponential",
                use_beta_sigmas=False, use_dynamic_shifting=True, use_exponential_sigmas=False,
                use_karras_sigmas=False, invert_sigmas=False)


def build_tokenizer():
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(sorted(ByteLevel.alphabet()))}  # the 256 byte symbols
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], additional_special_tokens=list(SPECIAL_TOKENS[1:]))


def text_encoder_config(tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = dict(vocab_size=VOCAB, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=2, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_DIM,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                  fullatt_block_indexes=[1])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"])


def _image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=VL_MIN_PIXELS, max_pixels=VL_MAX_PIXELS)


def _write_processor(folder: Path, tokenizer) -> None:
    """processor/: tokenizer files, preprocessor_config.json, video_preprocessor_config.json (real layout)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    ip = _image_processor()
    ip.save_pretrained(folder)
    cfg_path = folder / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_processor_type"] = "Qwen2VLImageProcessor"  # the name a real folder carries (any backend loads it)
    cfg["processor_class"] = "Qwen2VLProcessor"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    video = {k: cfg[k] for k in ("do_convert_rgb", "do_normalize", "do_rescale", "do_resize", "image_mean",
                                 "image_std", "merge_size", "patch_size", "resample", "rescale_factor", "size",
                                 "temporal_patch_size") if k in cfg}
    video.update(video_processor_type="Qwen2VLVideoProcessor", processor_class="Qwen2VLProcessor")
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")


def write_tiny_folder(out: str | Path, kind: str = "t2i", seed: int = 0) -> Path:
    """Write a tiny random pipeline folder of `kind` (t2i | edit | edit-plus) to `out`; returns the folder."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    if kind not in KINDS:
        raise UserError(f"--kind: unknown kind {kind!r} (known: {', '.join(KINDS)})")
    out = Path(out)
    if (out / "model_index.json").exists():
        raise UserError(f"{out}: already holds a pipeline folder (model_index.json); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    QwenImageTransformer2DModel(**transformer_config()).save_pretrained(out / "transformer")
    torch.manual_seed(seed + 1)
    AutoencoderKLQwenImage(**vae_config(seed)).save_pretrained(out / "vae")
    FlowMatchEulerDiscreteScheduler(**scheduler_config()).save_pretrained(out / "scheduler")
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out / "tokenizer")
    torch.manual_seed(seed + 2)
    encoder = Qwen2_5_VLForConditionalGeneration(text_encoder_config(tokenizer)).eval()
    encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    index = {"_class_name": KINDS[kind], "_diffusers_version": _diffusers_version(),
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
             "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
             "tokenizer": ["transformers", "Qwen2Tokenizer"],
             "transformer": ["diffusers", "QwenImageTransformer2DModel"],
             "vae": ["diffusers", "AutoencoderKLQwenImage"]}
    if kind != "t2i":
        _write_processor(out / "processor", tokenizer)
        index["processor"] = ["transformers", "Qwen2VLProcessor"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def torchvision_works() -> bool:
    """True when transformers can build its torchvision-backed video processor (then from_pretrained just works)."""
    try:
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            return False
        import torchvision  # noqa: F401

        return True
    except Exception:  # a torchvision built for another torch fails at import with RuntimeError
        return False


def load_processor(folder: str | Path):
    """The Qwen2VLProcessor of `folder/processor` (or of `folder` itself), with or without torchvision."""
    from transformers import Qwen2Tokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    if (folder / "processor").is_dir():
        folder = folder / "processor"
    if not (folder / "preprocessor_config.json").is_file():
        raise UserError(f"{folder}: no preprocessor_config.json (not a Qwen2VLProcessor folder)")
    if torchvision_works():
        return Qwen2VLProcessor.from_pretrained(folder)

    tokenizer = Qwen2Tokenizer.from_pretrained(folder)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(folder)
    return _image_only_processor_class()(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)


def _image_only_processor_class():
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2VLProcessor without its video half (which needs torchvision); the Qwen-Image pipelines pass images."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnlyQwen2VLProcessor


# A stand-in teacher, not a model: beyond std 1 the adapter's product B·A (entries ~ rank·std²) swamps the base,
# and std 1e300 would write Inf.
MAX_LORA_STD = 1.0


def _check_lora_args(base: Path, out: Path, rank: int, std: float) -> None:
    """Refuse, before any weight is read: a base that is not a pipeline folder, an --out that exists or is not a
    .safetensors path, a rank above the transformer's width (a larger one adds nothing and may not fit in memory),
    a std that is not a small positive number."""
    from flashdistill.files import read_json_object

    config_path = base / "transformer" / "config.json"
    if not config_path.is_file():
        raise UserError(f"--base {base}: no transformer/config.json (not a pipeline folder)")
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: must end in .safetensors")
    if out.exists():
        what = "a folder" if out.is_dir() else "a file already"
        raise UserError(f"--out {out}: is {what}; choose a new path (nothing is overwritten)")
    config = read_json_object(config_path, "transformer config")
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (heads, head_dim)):
        raise UserError(f"{config_path}: num_attention_heads and attention_head_dim must be positive integers, "
                        f"got {heads!r} and {head_dim!r}")
    if rank > heads * head_dim:
        raise UserError(f"--rank {rank}: at most {heads * head_dim}, the transformer's width (heads x head dim)")
    if not 0 < std <= MAX_LORA_STD:
        raise UserError(f"--std {std}: must be in (0, {MAX_LORA_STD}]")


def write_random_lora(base: str | Path, out: str | Path, rank: int = 4, std: float = 0.05, seed: int = 0) -> Path:
    """A random LoRA on the transformer of pipeline folder `base`, in diffusers' LoRA format
    (`QwenImagePipeline.save_lora_weights`; `load_lora_weights` reads it): a stand-in specialized teacher for
    trials on tiny folders. Both LoRA matrices are drawn N(0, std²), so the adapter changes the model."""
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from flashdistill.models.lora import DEFAULT_TARGETS

    base, out = Path(base), Path(out)
    _check_lora_args(base, out, rank, std)
    transformer = QwenImageTransformer2DModel.from_pretrained(base / "transformer")
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(DEFAULT_TARGETS)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    out.parent.mkdir(parents=True, exist_ok=True)
    QwenImagePipeline.save_lora_weights(out.parent, transformer_lora_layers=get_peft_model_state_dict(transformer),
                                        weight_name=out.name)
    return out
