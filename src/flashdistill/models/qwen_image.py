"""A diffusers Qwen-Image pipeline folder's parts (text encoder, VAE, transformer) behind flashdistill's interfaces;
the engine's `qwen-image` family (distill/families.py `QwenImageFolderFamily`) reads its folders through them.

`QwenImageParts(folder)` reads a folder of `QwenImagePipeline`, `QwenImageEditPipeline` or
`QwenImageEditPlusPipeline` (`model_index.json`; a real checkpoint or `flashdistill qwen tiny-folder`) with
diffusers' own classes, and calls diffusers' own code for what it already does:

- `encode_prompts(texts, sources=None)`: the pipeline's `encode_prompt` (its chat template, its drop index, last
  hidden layer). For the edit pipelines the source image goes to Qwen2.5-VL as well, resized as the pipeline's
  `__call__` resizes it (`condition_image`); the negative prompt is encoded with the image too.
- `encode_images(images)` / `decode(latents)`: the VAE with the config's z_dim-value `latents_mean` / `latents_std`
  (normalised z = (mode - mean) / std, as `QwenImageEditPipeline._encode_vae_image`; decode inverts it and runs the
  pipeline's `image_processor.postprocess`). Latents are (B, z, H/f, W/f), no frame axis: z the VAE's z_dim (16
  for Qwen-Image), f its factor (`vae_scale_factor`: 8 for Qwen-Image, `vae_factor(folder)` without loading it).
- `flow_model()`: the transformer as `FlowModel` (models/mmdit.py), i.e. `v = model(z_t, t, cond)`. Packing 2x2 is
  `_pack_latents`' order, t is the scheduler's sigma (the pipelines pass `timestep / 1000`), edit sources are
  appended after the target tokens with `img_shapes = [[target, source]]` and only target tokens are kept.
  Our convention z_t = (1-t)·x + t·eps, v = eps - x is the scheduler's: `step` is z + (sigma_next - sigma)·v.
- `sigmas(nfe, height, width)`: the pipeline's schedule: `linspace(1, 1/nfe, nfe)` shifted by the scheduler with
  `mu = calculate_shift(image_seq_len, ...)` from the scheduler config (Qwen-Image: 256..8192 -> 0.5..0.9),
  terminal stretch included; nfe + 1 values ending in 0.
- `cfg(v_cond, v_neg, scale)`: the pipelines' norm-preserving true CFG: neg + s·(cond - neg), rescaled per packed
  token to the norm of cond.

`tests/test_qwen_image.py` proves, on tiny folders, that a flashdistill sampling loop built from these pieces lands
on the very latents the pipeline's own `__call__` produces (T2I and editing, with true CFG).

Only the parts asked for are loaded (`parts`): `flashdistill cache` needs the text encoder and the VAE, training
only the transformer (the others are never resident next to the roles).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError, one_line
from flashdistill.models.mmdit import FlowModel, MMDiTConfig, pack, unpack
from flashdistill.records import read_record, require

Tensor = torch.Tensor
PIPELINES = ("QwenImagePipeline", "QwenImageEditPipeline", "QwenImageEditPlusPipeline")
KIND = {"QwenImagePipeline": "t2i", "QwenImageEditPipeline": "edit", "QwenImageEditPlusPipeline": "edit-plus"}
PARTS = ("text", "vae", "transformer")
NEGATIVE_PROMPT = " "  # what the Qwen-Image trainers use as the negative prompt (an empty string encodes the same way)
VAE_AREA = 1024 * 1024  # the edit pipelines' VAE area for a source image (QwenImageEditPlusPipeline.VAE_IMAGE_SIZE)
CONDITION_AREA = 384 * 384  # QwenImageEditPlusPipeline.CONDITION_IMAGE_SIZE: what Qwen2.5-VL sees of a source
COMPONENTS = ("scheduler", "text_encoder", "tokenizer", "transformer", "vae")  # + processor for the edit kinds


MAX_SIDE = 4096  # pixels: 65536 image tokens, far past the sizes Qwen-Image was trained at


def image_size(value, where: str) -> tuple[int, int]:
    """(height, width) in pixels of a size given as one side (a square) or as [height, width]: sides the Qwen-Image
    pipelines sample exactly, multiples of 16 (the VAE's factor 8 x the 2x2 patches) in [16, MAX_SIDE]; a UserError
    starting with `where` otherwise."""
    sides = list(value) if isinstance(value, (list, tuple)) else [value, value]
    if len(sides) != 2 or any(isinstance(px, bool) or not isinstance(px, int) or not 16 <= px <= MAX_SIDE or px % 16
                              for px in sides):
        raise UserError(f"{where} must be a side or [height, width], each a multiple of 16 (the VAE's factor 8 x the "
                        f"patch 2) in [16, {MAX_SIDE}], got {value!r}"[:300])
    return sides[0], sides[1]


def size_value(size: tuple[int, int]):
    """The record form of (height, width): one side for a square (as records before non-square sizes hold it),
    else [height, width]."""
    return size[0] if size[0] == size[1] else [size[0], size[1]]


def vae_factor(folder: str | Path) -> int:
    """Pixels per latent of a pipeline folder's VAE, as the pipelines compute `vae_scale_factor` (2 to the number of
    its `temperal_downsample` stages, read from vae/config.json without loading it): 8 for Qwen-Image's VAE, 4 for
    the tiny one of diffusers' own tests; 8 for a folder without a VAE config, as the pipelines take it without a
    VAE (training needs none: the cache holds what the VAE gave)."""
    from flashdistill.files import read_json_object

    path = Path(folder) / "vae" / "config.json"
    if not path.exists():
        return 8
    stages = read_json_object(path, "VAE config").get("temperal_downsample", [False, True, True])  # class default
    if not isinstance(stages, list):
        raise UserError(f"VAE config {path}: key 'temperal_downsample' must be a list, got {stages!r}"[:200])
    return 2 ** len(stages)


def check_edit_source(size: tuple[int, int], kind: str, area: int = VAE_AREA, what: str = "edit source") -> None:
    """Refuse a source (width, height) the edit pipelines of `kind` (edit | edit-plus) cannot take: they resize it,
    aspect kept, to `area` for the VAE and to their condition area for Qwen2.5-VL, in sides of multiples of 32
    (`calculate_dimensions`); a very wide or tall image (4000x1) gets a side of 0 there, and Qwen2.5-VL's processor
    refuses aspect ratios over 200."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    w, h = size
    vl_area = VAE_AREA if kind == "edit" else CONDITION_AREA
    for stage, stage_area in (("the VAE", area), ("Qwen2.5-VL", vl_area)):
        sw, sh = calculate_dimensions(stage_area, w / h)[:2]
        if min(sw, sh) == 0 or max(sw, sh) / min(sw, sh) > 200:
            raise UserError(f"{what} is {w}x{h} px: the pipeline resizes it to {sw}x{sh} for {stage} (area "
                            f"{stage_area}, aspect kept), which it cannot encode; crop or pad it nearer to square")


def read_model_index(folder: str | Path) -> dict:
    """The folder's model_index.json: a Qwen-Image pipeline class and a [library, class] entry for every component
    the pipeline reads (records.py: a damaged file or a missing key is a UserError naming both)."""
    folder = Path(folder)
    path = folder / "model_index.json"
    if not path.is_file():
        raise UserError(f"{folder}: not a diffusers pipeline folder (model_index.json is missing)")
    index = read_record(path, "pipeline index", {"_class_name": str})
    if index["_class_name"] not in PIPELINES:
        raise UserError(f"{path}: _class_name {index['_class_name']!r} is not one of {', '.join(PIPELINES)}")
    for name in COMPONENTS + (() if KIND[index["_class_name"]] == "t2i" else ("processor",)):
        entry = require(index, name, list, f"pipeline index {path}")
        if len(entry) != 2 or not all(isinstance(part, str) for part in entry):
            raise UserError(f"pipeline index {path}: key '{name}' must be [library, class], got {entry!r}"[:300])
    return index


def load_pretrained(cls, folder: Path, **kwargs):
    """`cls.from_pretrained(folder, local_files_only=True, **kwargs)`; a component that does not load (a damaged
    config, tokenizer or weight file) is a UserError naming the folder and the library's reason."""
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(folder, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as err:
        raise UserError(f"{folder}: the {cls.__name__} does not load from it ({one_line(err)[:300]})") from None


class QwenImageParts:
    """The loaded parts of a Qwen-Image(-Edit) pipeline folder and everything model-specific about them (see the
    module docstring)."""

    def __init__(self, folder: str | Path, parts: tuple[str, ...] = PARTS, device="cpu",
                 dtype: torch.dtype = torch.float32):
        import diffusers

        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; known: {PARTS}")
        self.folder = Path(folder)
        index = read_model_index(self.folder)
        self.pipeline_class = index["_class_name"]
        self.kind = KIND[self.pipeline_class]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder must never reach a hub
        skip = {"text": ("text_encoder",), "vae": ("vae",), "transformer": ("transformer",)}
        kwargs = {name: None for part in PARTS if part not in parts for name in skip[part]}
        if self.kind != "t2i":
            from flashdistill.models.qwen_tiny import load_processor

            kwargs["processor"] = load_processor(self.folder)
        self.pipe = load_pretrained(getattr(diffusers, self.pipeline_class), self.folder, dtype=dtype, **kwargs)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        for module in (self.pipe.text_encoder, self.pipe.vae, self.pipe.transformer):
            if module is not None:
                module.eval().requires_grad_(False)
        self.device = torch.device(device)
        self.scale = self.pipe.vae_scale_factor  # pixels per latent (8)
        self.vae_config = self._vae_config()

    # ---- text (and the edit source seen by Qwen2.5-VL) ---------------------------------------------------------
    def condition_image(self, image):
        """A source image (PIL) as the pipeline's `__call__` hands it to Qwen2.5-VL."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        area = VAE_AREA if self.kind == "edit" else CONDITION_AREA
        w, h = calculate_dimensions(area, image.size[0] / image.size[1])[:2]
        return self.pipe.image_processor.resize(image, h, w)

    def check_source(self, size: tuple[int, int], area: int = VAE_AREA, what: str = "edit source") -> None:
        """Refuse, before anything is encoded, a source (width, height) this pipeline cannot take
        (`check_edit_source`), or any source when this is a T2I pipeline."""
        if self.kind == "t2i":
            raise UserError(f"{what}: {self.folder} is a {self.pipeline_class}: it cannot encode an edit source")
        check_edit_source(size, self.kind, area, what)

    @torch.no_grad()
    def encode_prompts(self, texts: list[str], sources: list | None = None,
                       max_sequence_length: int = 1024) -> tuple[Tensor, Tensor]:
        """(emb (B, L, D) float32, mask (B, L) bool) from the pipeline's encode_prompt; L = the longest in the batch.

        `sources` (edit pipelines only): one PIL image per text (or None for a T2I row, encoded without image)."""
        if isinstance(texts, str):
            raise TypeError("encode_prompts takes a list of texts")
        if self.pipe.text_encoder is None:
            raise UserError(f"{self.folder}: the text encoder was not loaded (parts)")
        if sources is not None and self.kind == "t2i":
            raise UserError(f"{self.folder} is a {self.pipeline_class}: it cannot encode an edit source image")
        if sources is not None and len(sources) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(sources)} sources")
        if sources is None or all(s is None for s in sources):
            if self.kind == "edit":
                raise UserError(f"{self.folder}: QwenImageEditPipeline's template always holds an image; encode "
                                f"T2I prompts with a QwenImagePipeline or QwenImageEditPlusPipeline folder")
            emb, mask = self.pipe.encode_prompt(prompt=list(texts), device=self.device,
                                                max_sequence_length=max_sequence_length)
            return _with_mask(emb, mask)
        # One item per call: edit-plus reads a list of images as several sources of one prompt ("Picture 1: ...").
        return _stack([self._encode_one(t, s, max_sequence_length) for t, s in zip(texts, sources)])

    def _encode_one(self, text: str, source, max_sequence_length: int) -> tuple[Tensor, Tensor]:
        image = None
        if source is None and self.kind == "edit":
            raise UserError(f"{self.folder}: QwenImageEditPipeline encodes prompts only with a source image")
        if source is not None:
            image = self.condition_image(source)
            image = [image] if self.kind == "edit-plus" else image
        emb, mask = self.pipe.encode_prompt(prompt=[text], image=image, device=self.device,
                                            max_sequence_length=max_sequence_length)
        return _with_mask(emb, mask)

    # ---- images <-> normalised latents ------------------------------------------------------------------------
    def _vae_config(self) -> dict:
        path = self.folder / "vae" / "config.json"
        if self.pipe.vae is not None:
            config = dict(self.pipe.vae.config)
        else:
            config = read_record(path, "VAE config", {"z_dim": int, "latents_mean": list, "latents_std": list})
        for key in ("latents_mean", "latents_std"):  # one number per latent channel, or every latent is wrong
            values = config[key]
            if len(values) != config["z_dim"] or not all(isinstance(v, (int, float)) for v in values):
                raise UserError(f"VAE config {path}: key '{key}' must hold z_dim = {config['z_dim']} numbers")
        return config

    def _mean_std(self, like: Tensor) -> tuple[Tensor, Tensor]:
        z = int(self.vae_config["z_dim"])
        mean = torch.tensor(self.vae_config["latents_mean"]).view(1, z, 1, 1).to(like.device, like.dtype)
        std = torch.tensor(self.vae_config["latents_std"]).view(1, z, 1, 1).to(like.device, like.dtype)
        return mean, std

    def vae_pixels(self, image, height: int | None = None, width: int | None = None, area: int = VAE_AREA) -> Tensor:
        """A PIL source as the edit pipelines feed it to the VAE: (1, 3, H, W) in [-1, 1]; by default H x W has the
        source's aspect and the pipelines' area 1024² (sides multiples of 32)."""
        from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

        if height is None or width is None:
            width, height = calculate_dimensions(area, image.size[0] / image.size[1])[:2]
        if self.kind == "edit":  # QwenImageEditPipeline resizes first, then preprocesses
            image = self.pipe.image_processor.resize(image, height, width)
        return self.pipe.image_processor.preprocess(image, height, width)

    @torch.no_grad()
    def encode_images(self, pixels: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised latents (B, z, H/f, W/f): (mode - latents_mean) / latents_std."""
        if self.pipe.vae is None:
            raise UserError(f"{self.folder}: the VAE was not loaded (parts)")
        vae = self.pipe.vae
        dist = vae.encode(pixels.to(self.device, vae.dtype).unsqueeze(2)).latent_dist  # frames axis T=1
        z = dist.mode()[:, :, 0]  # (B, z, h, w), the distribution's mode as the edit pipelines take it
        mean, std = self._mean_std(z)
        return ((z - mean) / std).float()

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents (B, z, h, w) -> images (B, 3, fh, fw) in [0, 1] (the pipelines' decode + postprocess)."""
        if self.pipe.vae is None:
            raise UserError(f"{self.folder}: the VAE was not loaded (parts)")
        vae = self.pipe.vae
        z = latents.to(self.device, vae.dtype)
        mean, std = self._mean_std(z)
        image = vae.decode((z * std + mean).unsqueeze(2), return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(image, output_type="pt").float()

    @torch.no_grad()
    def encode_edit(self, instruction: str, image, negative_prompt: str = NEGATIVE_PROMPT,
                    area: int = VAE_AREA) -> dict[str, Tensor]:
        """What an edit needs, once: the VL embedding of source + instruction (`emb`, (L, D)), of source + negative
        prompt (`neg`), and the normalised source latents (`latents`, (z, h, w))."""
        emb, mask = self.encode_prompts([instruction, negative_prompt], [image, image])
        latents = self.encode_images(self.vae_pixels(image, area=area))[0]
        return {"emb": emb[0][mask[0]], "neg": emb[1][mask[1]], "latents": latents}

    def identity(self) -> str:
        """What the cached encodings depend on (`folder_identity`)."""
        return folder_identity(self.folder, self.pipeline_class)

    # ---- the transformer, time, guidance ----------------------------------------------------------------------
    def flow_model(self, height: int = 1024) -> FlowModel:
        """The transformer behind `v = model(z_t, t, cond)`, z_t (B, z, H/f, W/f). Only `height` is recorded (in
        MMDiTConfig.resolution); the forward reads every size, non-square and source sizes included, from z_t."""
        transformer = self.pipe.transformer
        if transformer is None:
            raise UserError(f"{self.folder}: the transformer was not loaded (parts)")
        side = height // self.scale
        return FlowModel(MMDiTConfig.from_transformer(transformer, side), transformer)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(z, h, w) of a height x width image (rounded down to whole 2x2 patches, as the pipelines do)."""
        m = self.scale * 2
        return int(self.vae_config["z_dim"]), 2 * (height // m), 2 * (width // m)

    def sigmas(self, nfe: int, height: int, width: int) -> Tensor:
        """The pipeline's nfe + 1 sigmas (float32, last 0) at this size: dynamic shift from calculate_shift."""
        _, h, w = self.latent_shape(height, width)
        return scheduler_sigmas(self.pipe.scheduler, nfe, h, w)

    @staticmethod
    def cfg(v_cond: Tensor, v_neg: Tensor, scale: float, p: int = 2) -> Tensor:
        """True CFG of the Qwen-Image pipelines on (B, C, H, W) velocities: combine, then give every packed token
        (a 2x2 patch over all channels) the norm of its conditional prediction."""
        cond, neg = pack(v_cond, p), pack(v_neg, p)  # (B, N, C·p²)
        comb = neg + scale * (cond - neg)
        comb = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return unpack(comb, v_cond.shape[2], v_cond.shape[3], p)

    def cond(self, texts: list[str], sources: list | None = None, categories: list[str] | None = None,
             source_size: tuple[int, int] | None = None) -> Cond:
        """A `Cond` straight from texts (and PIL sources): text through the VL model, sources through the VAE."""
        emb, mask = self.encode_prompts(texts, sources)
        if sources is None:
            return Cond(emb, mask, category=categories)
        h, w = source_size or (None, None)
        latents = torch.cat([self.encode_images(self.vae_pixels(s, h, w)) for s in sources])
        return Cond(emb, mask, latents, category=categories)


def scheduler_sigmas(scheduler, nfe: int, h: int, w: int) -> Tensor:
    """A Qwen-Image scheduler's nfe + 1 sigmas (float32, last 0) for latents h x w: the pipelines' schedule
    `linspace(1, 1/nfe, nfe)` with the dynamic shift `mu = calculate_shift(image_seq_len, ...)`."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift, retrieve_timesteps

    cfg = scheduler.config
    mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    private = type(scheduler).from_config(cfg)  # a copy: the caller's scheduler keeps its state
    retrieve_timesteps(private, nfe, "cpu", sigmas=np.linspace(1.0, 1 / nfe, nfe), mu=mu)
    return private.sigmas.float()


def pipeline_sigmas(folder: str | Path, nfe: int, h: int, w: int) -> Tensor:
    """`scheduler_sigmas` of the scheduler a pipeline folder holds (scheduler/scheduler_config.json)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}: its scheduler does not load ({' '.join(str(err).split())[:160]})") from None
    return scheduler_sigmas(scheduler, nfe, h, w)


def folder_identity(folder: str | Path, pipeline_class: str) -> str:
    """What a folder's encodings depend on: the pipeline class, the encoder/VAE/tokenizer configs and the weight
    files' names and sizes (a cheap fingerprint; weights are not hashed). Needs no model loaded."""
    import hashlib

    folder = Path(folder)
    h = hashlib.sha256(pipeline_class.encode())
    for sub in ("text_encoder", "vae", "tokenizer", "processor"):
        for path in sorted((folder / sub).glob("*")):
            if path.suffix == ".json" or path.name.endswith(".txt"):
                h.update(path.name.encode() + path.read_bytes())
            elif path.is_file():
                h.update(f"{path.name}:{path.stat().st_size}".encode())
    return h.hexdigest()[:32]


def _with_mask(emb: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The pipelines return mask None when no row is padded; we always carry a bool mask."""
    if mask is None:
        mask = torch.ones(emb.shape[:2], dtype=torch.bool, device=emb.device)
    return emb.float(), mask.bool()


def _stack(rows: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Right-pad (1, L_i, D) rows to the longest and stack; padding is zeros with mask False."""
    n = max(e.shape[1] for e, _ in rows)
    emb = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, n - e.shape[1])) for e, _ in rows])
    mask = torch.cat([torch.nn.functional.pad(m, (0, n - m.shape[1])) for _, m in rows])
    return emb, mask
