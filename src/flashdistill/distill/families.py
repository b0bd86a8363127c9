"""Model families at the engine's seams (docs/design.md, "Seams"): the trainer asks its `Family`, never which family
it is.

`family_for(recipe)` looks once at the base teacher (`student.init_from`): a diffusers Qwen-Image pipeline folder
(`model_index.json`) is the `qwen-image` family (`QwenImageFolderFamily`), anything else the `embedded` one
(`EmbeddedFamily`). A family answers (the `Family` Protocol):

- `resolve(spec, key)`: the path a teacher spec names (errors name the recipe key);
- `load_model(path, dtype)`: a frozen-able `FlowModel` (`v = model(z_t, t, cond)`) whose weights are read from
  safetensors straight into `dtype` (roles.frozen_dtype; no float32 copy of bf16 weights on the way); a LoRA
  teacher is fused;
- `structure(path, dtype)`: the same model built on the meta device from its config, no weights read (FSDP
  loading, distill/layouts/fsdp.py);
- `is_lora(path)`, `lora_adapter(path, base)`: (folder, file, prefix) of a teacher stored as a LoRA on the
  base, or None; `roles.mode:
  lora` loads it as an adapter on the shared base instead of fusing it (distill/layouts/lora.py);
- `cfg_rule`: how the teachers' guided velocity is formed (None: v_u + w·(v_c - v_u); Qwen-Image: the pipelines'
  norm-preserving true CFG, `QwenImageParts.cfg`);
- `source(recipe, out, encoder, config)`: the batch source (flashdistill.data.sources): the world with MiniLM text,
  or the data files with the ConditionCache (no text encoder, no VAE);
- `export(roles, folder, timesteps, info)`: the student on disk (distill/export.py, or distill/qwen_export.py:
  diffusers LoRA file + merged transformer + 4-step scheduler);
- `sampling_sigmas(spec, nfe)`: the base teacher's own sampling grid (the pairs cache samples along it);
- `check(recipe)`: refuse a recipe this family cannot train, naming the key.

Teachers of the qwen-image family: a pipeline folder (its `transformer/` is read; the text encoder and the VAE are
not) or a `.safetensors` LoRA file in diffusers' format (`QwenImagePipeline.save_lora_weights`) on the base.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from flashdistill.data.sources import BatchSource
from flashdistill.errors import UserError
from flashdistill.models.folders import CONFIG_FILE, TRANSFORMER_FOLDER
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.shipped import teacher_folder

DEFAULT_RESOLUTION = 1024  # Qwen-Image's native side; data.resolution overrides it


class Family(Protocol):
    """What the engine asks of a model family (see the module docstring); `EmbeddedFamily`, `QwenImageFolderFamily`."""

    name: str  # "embedded" | "qwen-image": recorded with caches built for the family
    cfg_rule: Callable | None

    def check(self, recipe) -> None: ...

    def resolve(self, spec: str, key: str) -> Path: ...

    def load_model(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel: ...

    def structure(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel: ...

    def is_lora(self, path: Path) -> bool: ...

    def lora_adapter(self, path: Path, base_path: Path) -> tuple[Path, str, str | None] | None: ...

    def source(self, recipe, out: Path, encoder, config: MMDiTConfig) -> BatchSource: ...

    def export(self, roles, folder: Path, timesteps: list[float], info: dict) -> Path: ...

    def sampling_sigmas(self, spec: str, nfe: int) -> torch.Tensor: ...


def family_for(recipe) -> Family:
    """The family of the recipe's base teacher (see the module docstring)."""
    spec = recipe.teachers[recipe.student.init_from]
    if (Path(spec) / "model_index.json").is_file():
        family = QwenImageFolderFamily(Path(spec), recipe.data.size(DEFAULT_RESOLUTION))
    else:
        family = EmbeddedFamily()
    family.check(recipe)
    return family


class EmbeddedFamily:
    """flashdistill's own models (FlowModel folders, `teacher:NAME`), the world, MiniLM text."""

    name = "embedded"
    cfg_rule = None

    def check(self, recipe) -> None:
        if recipe.data.uses_files():
            raise UserError(f"data.prompts / data.edits: data files are encoded by a Qwen-Image pipeline folder; "
                            f"teachers.{recipe.student.init_from} is not one (no model_index.json)")

    def resolve(self, spec: str, key: str) -> Path:
        return resolve_teacher(spec, key)

    def load_model(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel:
        # `dtype` whatever the storage dtype: shipped teachers are stored in float16 to halve the package
        return FlowModel.from_pretrained(path, torch_dtype=dtype)

    def structure(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel:
        from flashdistill.files import read_json_object
        from flashdistill.models.mmdit import config_from_meta

        meta_path = Path(path) / CONFIG_FILE
        config = config_from_meta(read_json_object(meta_path, "model config"), meta_path)
        with torch.device("meta"):
            return FlowModel(config).to(dtype)

    @staticmethod
    def _lora_meta(path: Path) -> dict:
        meta_path = path / CONFIG_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return meta if meta.get("model") == "mmdit-lora" else {}

    def is_lora(self, path: Path) -> bool:
        return bool(self._lora_meta(path))

    def lora_adapter(self, path: Path, base_path: Path):
        from flashdistill.models.lora import WEIGHTS, resolve_base

        meta = self._lora_meta(path)
        if not meta:
            return None
        if resolve_base(meta["lora"]["base"], path).resolve() != base_path:
            return None  # a LoRA on another base: its own fused model
        return path / TRANSFORMER_FOLDER, WEIGHTS, None

    def source(self, recipe, out: Path, encoder, config: MMDiTConfig):
        from flashdistill.data.sources import WorldSource
        from flashdistill.models.text import open_text_cache

        # prompts spelled as the teachers were trained
        cache = open_text_cache(recipe.run.text_cache, out, encoder, config.spell_quoted)
        return WorldSource(recipe.task_mix(), recipe.dmd.seed, config.resolution, cache)

    def export(self, roles, folder: Path, timesteps: list[float], info: dict) -> Path:
        from flashdistill.distill.export import export_student

        return export_student(roles.ema, folder, timesteps, info)

    def sampling_sigmas(self, spec: str, nfe: int) -> torch.Tensor:
        """The base teacher's own `nfe`-step Euler grid (nfe + 1 times, last 0): the shift its teacher.json records,
        as `flashdistill generate` and the benches sample it."""
        from flashdistill.flow import euler_timesteps
        from flashdistill.models.shipped import recorded_sampling

        return euler_timesteps(nfe, recorded_sampling(self.resolve(spec, "teachers"), 1.0)[0])


def resolve_teacher(spec: str, key: str) -> Path:
    """A teacher folder from its recipe spec: a path, or `teacher:NAME` for the shipped teacher NAME."""
    try:
        return teacher_folder(spec)
    except UserError as err:
        raise UserError(f"{key}: {err}") from None


class QwenImageFolderFamily:
    """A diffusers Qwen-Image(-Edit) pipeline folder as the base; the user's data files through the cache."""

    name = "qwen-image"

    def __init__(self, folder: Path, size: tuple[int, int]):
        from flashdistill.models.qwen_image import QwenImageParts, read_model_index, vae_factor

        self.folder = folder.resolve()
        self.index = read_model_index(self.folder)
        self.size = size  # (height, width) of the targets in pixels
        self.factor = vae_factor(self.folder)  # pixels per latent, as the pipelines compute it
        if any(px % (2 * self.factor) for px in size):
            raise UserError(f"data.resolution {list(size)}: the VAE of {self.folder} has factor {self.factor}, so "
                            f"with 2x2 patches each side must be a multiple of {2 * self.factor}")
        self.cfg_rule = QwenImageParts.cfg

    def check(self, recipe) -> None:
        if not recipe.data.uses_files():
            raise UserError(f"teachers.{recipe.student.init_from}: a Qwen-Image folder trains on your data files: "
                            f"set data.prompts and/or data.edits (then run `flashdistill cache`)")
        if not recipe.run.text_cache:
            raise UserError("run.text_cache: name the folder `flashdistill cache RECIPE` wrote (the condition cache)")
        recipe.check_tasks()

    def resolve(self, spec: str, key: str) -> Path:
        from flashdistill.models.lora_check import check_lora_file

        path = Path(spec)
        if path.is_file() and path.suffix == ".safetensors":  # fits the base, finite, before peft reads it
            return check_lora_file(path, self.folder / TRANSFORMER_FOLDER, key)
        if (path / "model_index.json").is_file():
            return path
        raise UserError(f"{key}: {spec} is neither a Qwen-Image pipeline folder (model_index.json) nor a LoRA "
                        f".safetensors file")

    def load_model(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel:
        adapter = self.lora_adapter(path, self.folder)
        transformer = self.read_transformer((self.folder if adapter else path) / TRANSFORMER_FOLDER, dtype)
        if adapter:  # a LoRA teacher, fused into its own copy of the base (roles.mode full)
            transformer.load_lora_adapter(str(adapter[0]), weight_name=adapter[1], prefix=adapter[2])
            transformer.fuse_lora()
            transformer.unload_lora()
        return FlowModel(MMDiTConfig.from_transformer(transformer, self.latent_sides()[0]), transformer)

    @staticmethod
    def read_transformer(folder: Path, dtype: torch.dtype):
        """diffusers' QwenImageTransformer2DModel from `folder`, each tensor read from safetensors into `dtype` (the
        seam benchmarks/gpu_fullsize.py replaces with random weights of the same shapes)."""
        from flashdistill.models.mmdit import _load_transformer

        return _load_transformer(folder, dtype)  # safetensors only; a missing or damaged file is one line

    def structure(self, path: Path, dtype: torch.dtype = torch.float32) -> FlowModel:
        from diffusers import QwenImageTransformer2DModel

        folder = self.folder if self.lora_adapter(path, self.folder) else path
        config = QwenImageTransformer2DModel.load_config(folder / TRANSFORMER_FOLDER)
        with torch.device("meta"):
            transformer = QwenImageTransformer2DModel.from_config(config).to(dtype)
        return FlowModel(MMDiTConfig.from_transformer(transformer, self.latent_sides()[0]), transformer)

    def is_lora(self, path: Path) -> bool:
        return Path(path).is_file()

    def latent_sides(self) -> tuple[int, int]:
        """(h, w) of a target's latents: `size` over the VAE's factor (8 for Qwen-Image, 4 for diffusers' test VAE).
        Their channels are the transformer's (`MMDiTConfig.channels`: what the VAE encodes, z_dim 16 for
        Qwen-Image, 4 in diffusers' tests)."""
        return self.size[0] // self.factor, self.size[1] // self.factor

    def lora_adapter(self, path: Path, base_path: Path):
        path = Path(path)
        return (path.parent, path.name, "transformer") if path.is_file() else None

    def source(self, recipe, out: Path, encoder, config: MMDiTConfig):
        from flashdistill.data.files import read_edits, read_prompts
        from flashdistill.data.sources import FileSource

        d = recipe.data
        cache = self.condition_cache(recipe.run.text_cache)
        prompts = read_prompts(d.prompts) if d.prompts else []
        edits = read_edits(d.edits, check_images=False) if d.edits else []
        return FileSource(recipe.task_mix(), recipe.dmd.seed, prompts, edits, cache,
                          (config.channels, *self.latent_sides()))

    def condition_cache(self, folder: str):
        """The condition cache `flashdistill cache` wrote into `folder` for this base's encoders (data/cache.py)."""
        from flashdistill.data.cache import ConditionCache
        from flashdistill.models.qwen_image import folder_identity

        return ConditionCache(folder, folder_identity(self.folder, self.index["_class_name"]))

    def sampling_sigmas(self, spec: str, nfe: int) -> torch.Tensor:
        """The pipeline's own `nfe`-step sigmas at data.resolution (its scheduler's dynamic shift over the latent
        sides, as the pipelines compute it; last 0)."""
        from flashdistill.models.qwen_image import pipeline_sigmas

        return pipeline_sigmas(self.folder, nfe, *self.latent_sides())

    def export(self, roles, folder: Path, timesteps: list[float], info: dict) -> Path:
        from flashdistill.distill.qwen_export import export_qwen_student
        from flashdistill.models.qwen_image import size_value

        return export_qwen_student(roles, folder, timesteps, {**info, "resolution": size_value(self.size)},
                                   self.folder)
