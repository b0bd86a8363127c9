"""The one model interface of flashdistill, `v = model(z_t, t, cond)`, on diffusers' QwenImageTransformer2DModel.

`FlowModel` wraps the real Qwen-Image MMDiT class, so the small embedded teachers and a full Qwen-Image(-Edit)
checkpoint are driven by the same code. It speaks the pipelines' language exactly:

- Packing: (B, C, H, W) -> (B, H/2·W/2, C·4) with `QwenImagePipeline._pack_latents`' element order (2x2 patches,
  channel-major inside a patch), so `in_channels = C·4`; `unpack` is `_unpack_latents` without the VAE factor.
  In the embedded world C=3 pixels in [-1, 1]; for a real checkpoint C=16 VAE latents.
- Time: diffusers' scheduler timesteps are sigma·1000 and the pipelines call the transformer with
  `timestep / 1000`, i.e. sigma in [0, 1]; the model's sinusoidal embedding multiplies by 1000 itself
  (`Timesteps(scale=1000)`). Our t is sigma (see flashdistill.flow), so t goes in unchanged.
- Editing (QwenImageEditPipeline): the source latents are packed the same way and appended after the target tokens
  along the sequence, `img_shapes` gets a second entry per sample `[(1, h, w), (1, h_src, w_src)]` (RoPE gives the
  source frame index 1), and only the first N (target) output tokens are kept.
- Text: token embeddings (B, L, D) with a bool mask; padding is excluded from attention by the mask and text RoPE
  positions start at a fixed offset, so trailing padding never changes the output. We trim columns that are
  padding in every row before calling the model, because attention cost grows with the sequence length.

A batch may mix T2I items and edit items (`Cond.has_source`). They have different sequence lengths, so the two
groups run as two forwards and the outputs are scattered back into batch order; autograd flows through both.

Save/load: `save_pretrained(folder)` writes `folder/transformer/` with diffusers' own save_pretrained (config.json
+ safetensors, loadable by `QwenImageTransformer2DModel.from_pretrained(folder, subfolder="transformer")`, the
pipelines' layout) and `folder/flashdistill_model.json` with our config. A LoRA model (`models/lora.py`) writes
its adapter and the name of its base instead, and loads back fused into a plain model.
Tests: `pytest tests/test_mmdit.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from diffusers import QwenImageTransformer2DModel
from torch import nn

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.models.folders import CONFIG_FILE, TRANSFORMER_FOLDER
from flashdistill.models.lora import fuse_adapter, lora_base_spec, resolve_base, save_lora

Tensor = torch.Tensor


@dataclass
class MMDiTConfig:
    """Shape of the model; `tiny()` for tests, `small()` for the embedded teachers."""

    resolution: int = 32  # side of z_t in model space (pixels here, latents for a real checkpoint)
    channels: int = 3
    patch_size: int = 2
    num_layers: int = 5
    num_attention_heads: int = 6
    attention_head_dim: int = 32
    joint_attention_dim: int = 384  # all-MiniLM-L6-v2 hidden size
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)  # (frame, height, width); sums to attention_head_dim
    # Text convention, not shape: the model was trained on prompts whose quoted words are also spelled out letter by
    # letter (models.text.spell_quoted). Every encoder that feeds this model must do the same.
    spell_quoted: bool = False

    def __post_init__(self):
        self.axes_dims_rope = tuple(int(a) for a in self.axes_dims_rope)
        if len(self.axes_dims_rope) != 3 or sum(self.axes_dims_rope) != self.attention_head_dim:
            raise UserError(f"axes_dims_rope {self.axes_dims_rope} must be 3 numbers summing to attention_head_dim "
                            f"{self.attention_head_dim}")
        if any(a % 2 for a in self.axes_dims_rope):
            raise UserError(f"axes_dims_rope {self.axes_dims_rope} must all be even (complex rotary pairs)")
        if self.resolution % self.patch_size:
            raise UserError(f"resolution {self.resolution} must be a multiple of patch_size {self.patch_size}")

    @classmethod
    def tiny(cls) -> MMDiTConfig:
        """~0.35M parameters: for tests."""
        return cls(num_layers=2, num_attention_heads=2, attention_head_dim=32, axes_dims_rope=(8, 12, 12))

    @classmethod
    def small(cls) -> MMDiTConfig:
        """~6.9M parameters (width 192, 5 double-stream blocks): the embedded teachers."""
        return cls(num_layers=5, num_attention_heads=6, attention_head_dim=32, axes_dims_rope=(8, 12, 12))

    def transformer_kwargs(self) -> dict:
        c = self.channels * self.patch_size**2
        return dict(patch_size=self.patch_size, in_channels=c, out_channels=self.channels,
                    num_layers=self.num_layers, attention_head_dim=self.attention_head_dim,
                    num_attention_heads=self.num_attention_heads, joint_attention_dim=self.joint_attention_dim,
                    axes_dims_rope=self.axes_dims_rope)

    @classmethod
    def from_transformer(cls, transformer: QwenImageTransformer2DModel, resolution: int) -> MMDiTConfig:
        """Our config for an existing diffusers transformer (e.g. a real Qwen-Image checkpoint)."""
        cfg = transformer.config
        return cls(resolution=resolution, channels=cfg.out_channels or cfg.in_channels // cfg.patch_size**2,
                   patch_size=cfg.patch_size, num_layers=cfg.num_layers,
                   num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
                   joint_attention_dim=cfg.joint_attention_dim, axes_dims_rope=tuple(cfg.axes_dims_rope))


def pack(x: Tensor, p: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, H/p·W/p, C·p²), the element order of QwenImagePipeline._pack_latents (p=2)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpack(tokens: Tensor, height: int, width: int, p: int = 2) -> Tensor:
    """(B, H/p·W/p, C·p²) -> (B, C, H, W), the inverse of `pack` (QwenImagePipeline._unpack_latents' order)."""
    b, _, d = tokens.shape
    c = d // (p * p)
    x = tokens.view(b, height // p, width // p, c, p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(b, c, height, width)


class FlowModel(nn.Module):
    """v = model(z_t, t, cond): the velocity (eps - x) at z_t (B, C, H, W), t (B,) in [0, 1] (1 = noise)."""

    def __init__(self, config: MMDiTConfig, transformer: QwenImageTransformer2DModel | None = None):
        super().__init__()
        if transformer is None:
            transformer = QwenImageTransformer2DModel(**config.transformer_kwargs())
        inner = replace(MMDiTConfig.from_transformer(transformer, config.resolution), spell_quoted=config.spell_quoted)
        if inner != config:
            raise UserError(f"the transformer does not match the config: it is {inner}, the config says {config}")
        self.config = config
        self.transformer = transformer
        self.lora: dict | None = None  # set by models.lora.add_lora: {base, rank, alpha, targets}
        # Sharded (FSDP2) copies: `any_rank(*flags)` says which row kinds (T2I, edit) some rank holds, so every
        # rank runs the same transformer calls (each call gathers the parameters; see `_same_calls`)
        self.any_rank = None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, z_t: Tensor, t: Tensor, cond: Cond, hidden_layer: int | tuple[int, ...] | None = None):
        """v (B, C, H, W); with `hidden_layer` = j also the target tokens' hidden states after block j (1-based),
        (B, N, D), for representation alignment (teacher/repa.py); with a tuple of blocks, theirs stacked
        (B, L, N, D) (the GAN's classifier, distill/gan.py)."""
        b = z_t.shape[0]
        t = torch.as_tensor(t, device=z_t.device, dtype=torch.float32).expand(b)  # (B,)
        if cond.batch_size != b:
            raise ValueError(f"cond has {cond.batch_size} rows, z_t has {b}")
        edit = cond.has_source
        # one collective per call on every rank: which row kinds some rank holds
        kinds = None if self.any_rank is None else self.any_rank(not bool(edit.all()), bool(edit.any()))
        if not bool(edit.any()) or bool(edit.all()):
            v, hidden = self._group(z_t, t, cond.text, cond.text_mask, cond.source if bool(edit.all()) else None,
                                    hidden_layer)
            if kinds is not None:
                v = self._same_calls(v, z_t, t, cond, bool(edit.all()), kinds)
            return v if hidden_layer is None else (v, hidden)
        # Mixed batch: T2I rows (N tokens) and edit rows (N + N_src tokens) cannot share one sequence length.
        rows_t2i, rows_edit = (~edit).nonzero().squeeze(1), edit.nonzero().squeeze(1)
        v_t2i, h_t2i = self._group(z_t[rows_t2i], t[rows_t2i], cond.text[rows_t2i], cond.text_mask[rows_t2i], None,
                                   hidden_layer)
        v_edit, h_edit = self._group(z_t[rows_edit], t[rows_edit], cond.text[rows_edit], cond.text_mask[rows_edit],
                                     cond.source[rows_edit], hidden_layer)
        inverse = torch.argsort(torch.cat([rows_t2i, rows_edit]))
        v = torch.cat([v_t2i, v_edit])[inverse]  # (B, C, H, W) back in batch order
        return v if hidden_layer is None else (v, torch.cat([h_t2i, h_edit])[inverse])

    def _same_calls(self, v: Tensor, z_t: Tensor, t: Tensor, cond: Cond, edit: bool, kinds: tuple[bool, bool]
                    ) -> Tensor:
        """This rank's rows were all of one kind: when another rank holds rows of the other kind, run that group
        too, on a stand-in row, and add 0 x its output, so every rank makes the same calls in forward and
        backward (a sharded model gathers its parameters per call; unequal calls would hang the collectives)."""
        t2i_anywhere, edit_anywhere = kinds
        if (edit and not t2i_anywhere) or (not edit and not edit_anywhere):
            return v
        source = None if edit else torch.zeros_like(z_t[:1])
        other, _ = self._group(z_t[:1], t[:1], cond.text[:1], cond.text_mask[:1], source)
        return v + 0.0 * other.sum()

    def _group(self, z_t: Tensor, t: Tensor, text: Tensor, text_mask: Tensor, source: Tensor | None,
               hidden_layer: int | tuple[int, ...] | None = None) -> tuple[Tensor, Tensor | None]:
        """One forward of the transformer for rows that all have (or all lack) an edit source: (v, hidden or None)."""
        b, _, h, w = z_t.shape
        p = self.config.patch_size
        dtype = self.transformer.img_in.weight.dtype
        text, text_mask = _trim_text(text, text_mask)
        tokens = pack(z_t, p)  # (B, N, C·p²)
        n = tokens.shape[1]
        shapes = [(1, h // p, w // p)]
        if source is not None:
            tokens = torch.cat([tokens, pack(source.to(z_t.dtype), p)], dim=1)  # (B, N + N_src, C·p²)
            shapes.append((1, source.shape[2] // p, source.shape[3] // p))
        layers = () if hidden_layer is None else (hidden_layer,) if isinstance(hidden_layer, int) else hidden_layer
        captured: dict[int, Tensor] = {}
        hooks = [self.transformer.transformer_blocks[j - 1].register_forward_hook(  # a block returns (text, image)
            lambda _m, _i, out, j=j: captured.__setitem__(j, out[1][:, :n])) for j in dict.fromkeys(layers)]
        try:
            out = self.transformer(
                hidden_states=tokens.to(dtype),
                encoder_hidden_states=text.to(dtype),
                encoder_hidden_states_mask=None if bool(text_mask.all()) else text_mask,
                timestep=t.to(dtype),  # sigma in [0, 1], as the pipelines pass `timestep / 1000`
                img_shapes=[shapes] * b,
                return_dict=False,
            )[0]
        finally:
            for hook in hooks:
                hook.remove()
        v = unpack(out[:, :n], h, w, p).to(z_t.dtype)  # only the target tokens are denoised
        if not layers:
            return v, None
        return v, (captured[layers[0]] if isinstance(hidden_layer, int)
                   else torch.stack([captured[j] for j in layers], 1))

    def save_pretrained(self, folder: str | Path) -> None:
        """A LoRA model (models.lora) writes its adapter and the name of its base; any other the full weights."""
        folder = Path(folder)
        if self.lora is not None:
            return save_lora(self, folder)
        self.transformer.save_pretrained(folder / TRANSFORMER_FOLDER)
        meta = {"format": 1, "model": "mmdit", "config": asdict(self.config)}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None) -> FlowModel:
        """Weights load from safetensors only (diffusers' `use_safetensors=True`): pickle files are never read.
        A missing, damaged or foreign file is a UserError naming it (see `_load_transformer`)."""
        from flashdistill.files import read_json_object

        folder = Path(folder)
        meta_path = folder / CONFIG_FILE
        if not meta_path.is_file():
            raise UserError(f"no flashdistill model in {folder}: {CONFIG_FILE} is missing")
        meta = read_json_object(meta_path, "model config")
        if meta.get("model") == "mmdit-lora":
            return _load_lora(folder, meta, torch_dtype)
        config = config_from_meta(meta, meta_path)
        return cls(config, _load_transformer(folder / TRANSFORMER_FOLDER, torch_dtype))


def _load_lora(folder: Path, meta: dict, torch_dtype: torch.dtype | None) -> FlowModel:
    """A LoRA folder (models/lora.py): its base + the adapter, fused and unloaded, a plain FlowModel."""
    spec = lora_base_spec(folder, meta)
    config = config_from_meta(meta, folder / CONFIG_FILE)
    base = FlowModel.from_pretrained(resolve_base(spec, folder), torch_dtype=torch_dtype)
    if base.config != config:
        raise UserError(f"{folder}: the adapter was trained on a {meta['config']} base, {spec} is a "
                        f"{base.config}")
    fuse_adapter(base.transformer, folder)
    return base


def config_from_meta(meta: dict, meta_path: Path) -> MMDiTConfig:
    """The MMDiTConfig a flashdistill_model.json records; UserError naming the file and key when it is wrong."""
    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise UserError(f"{meta_path}: 'config' must be an object with the model's shape, got {raw!r}"[:300])
    unknown = sorted(set(raw) - {f.name for f in fields(MMDiTConfig)})
    if unknown:
        raise UserError(f"{meta_path}: unknown config keys {unknown}")
    for f in fields(MMDiTConfig):
        value = raw.get(f.name, f.default)
        if isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise UserError(f"{meta_path}: config.{f.name} must be true or false, got {value!r}")
        elif isinstance(f.default, int) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{meta_path}: config.{f.name} must be a positive integer, got {value!r}")
    try:
        return MMDiTConfig(**raw)
    except (TypeError, ValueError, UserError) as err:
        raise UserError(f"{meta_path}: config: {err}") from None


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _load_transformer(folder: Path, torch_dtype: torch.dtype | None) -> QwenImageTransformer2DModel:
    """diffusers' from_pretrained with use_safetensors=True; a folder with only pickle weights is refused."""
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: config.json is missing (not a diffusers transformer folder)")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{folder}: only pickle weights ({', '.join(pickles)}); flashdistill loads safetensors "
                            f"only, because unpickling a file can run code. Convert it where you trust it "
                            f"(safetensors.torch.save_file) and load again")
        raise UserError(f"{folder}: no diffusion_pytorch_model.safetensors")
    kwargs = {} if torch_dtype is None else {"torch_dtype": torch_dtype}
    try:
        return QwenImageTransformer2DModel.from_pretrained(folder, use_safetensors=True, **kwargs)
    except (OSError, ValueError, TypeError, RuntimeError) as err:  # damaged safetensors, broken config.json
        cause = err.__cause__ or err
        reason = " ".join(str(cause).split())[:200] or type(cause).__name__
        raise UserError(f"{folder}: the weights do not load: {reason}") from None


def _trim_text(text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Drop trailing columns that are padding in every row (masked tokens never reach the image tokens)."""
    real = text_mask.any(0).nonzero()
    n = int(real.max()) + 1 if real.numel() else 1
    return text[:, :n], text_mask[:, :n]
