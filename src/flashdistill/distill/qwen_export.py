"""A Qwen-Image student on disk, and sampling it through diffusers' own pipeline classes.

Export layout (`<run>/student/`):

    pytorch_lora_weights.safetensors   (roles.mode lora) the EMA student adapter in diffusers' LoRA format, its
                                       scale alpha/rank folded into lora_B (`lora_layers`): diffusers'
                                       `QwenImagePipeline.load_lora_weights(DIR)` (and the Edit / Edit-Plus
                                       pipelines) and ComfyUI's LoRA loader load it onto the base at its trained
                                       strength, whatever `roles.lora_alpha` was
    transformer/                       the merged student: `QwenImageTransformer2DModel.from_pretrained(DIR,
                                       subfolder="transformer")` (base + adapter fused, or the full student)
    scheduler/scheduler_config.json    FlowMatchEulerDiscreteScheduler that gives the student's sigmas at its NFE
                                       inside the pipelines (see `student_scheduler`), with stochastic_sampling
                                       (predict x0, re-noise to the next sigma: the DMD student's sampler)
    student.json                       family, base folder, timesteps, resolution, iteration, recipe

`student_scheduler(timesteps)`: the pipelines set sigmas = linspace(1, 1/N, N) and shift them by mu. When the
student's timesteps are that grid under a constant shift s (Qwen-Image-Flash's [1.0, 0.9, 0.75, 0.5] is s = 3),
the config fixes mu = log s (base_shift = max_shift = log s, exponential shift, no terminal stretch), so
`pipe(num_inference_steps=4)` runs exactly the training times. Otherwise the times are passed as `sigmas=`.

`QwenStudent(run)`: `generate` / `edit --model RUN` (bench/models.load_model) build the base's pipeline class
from the base folder with the exported transformer and scheduler: T2I through `QwenImagePipeline` (from_pipe of an
edit base), edits through the base's Edit / Edit-Plus pipeline. Before anything loads, student.json's keys are
checked (`read_student_record`: base, timesteps, resolution; one UserError naming the file and key) and the
exported transformer's config against the base's (`check_same_architecture`); an image of NaN is an error, never a
black PNG. A student samples unguided (`generate --cfg` is refused by the CLI) at its training size, or at any
other size of multiples of 16 asked for with `--resolution` (a side, or HEIGHTxWIDTH: `set_resolution`).
Tests: `pytest tests/test_qwen_export.py tests/test_qwen_distill.py tests/test_qwen_inputs.py`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path

import numpy as np
import torch

from flashdistill.errors import UserError
from flashdistill.files import read_json_object, swap_in
from flashdistill.records import read_record

STUDENT_FILE = "student.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
FAMILY = "qwen-image"


def constant_shift(timesteps: list[float]) -> float | None:
    """s such that timesteps = shift_s(linspace(1, 1/N, N)), or None when no constant shift gives them."""
    n = len(timesteps)
    grid = np.linspace(1.0, 1.0 / n, n)
    if n == 1:
        return 1.0 if abs(timesteps[0] - 1.0) < 1e-6 else None
    u, t = grid[1], float(timesteps[1])
    s = t * (1 - u) / (u * (1 - t))
    shifted = s * grid / (1 + (s - 1) * grid)
    return float(s) if np.allclose(shifted, timesteps, atol=1e-5) else None


def student_scheduler(timesteps: list[float]):
    """The diffusers scheduler of the student (see the module docstring)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = constant_shift(timesteps)
    if s is None:  # arbitrary times: passed explicitly as sigmas, unshifted
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=1.0, use_dynamic_shifting=True, base_shift=math.log(s), max_shift=math.log(s),
            time_shift_type="exponential", shift_terminal=None, stochastic_sampling=True)
    scheduler.register_to_config(_student_sigmas=[float(t) for t in timesteps])
    return scheduler


def merged_transformer(view):
    """The student's transformer with its adapter fused, built in host memory one layer at a time: a copy of the
    shared base on the GPU would need a second base there (38 GiB at 20B, in the middle of training)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from flashdistill.distill.layouts.fsdp import fix_meta_rope

    base = view.base.transformer
    lora = {name: m for name, m in base.named_modules() if isinstance(m, BaseTunerLayer)}
    state = {}
    with torch.no_grad():
        for name, module in lora.items():
            layer = module.get_base_layer()
            delta = module.get_delta_weight(view.adapter)  # B @ A x scale, on the layer's device: one layer's size
            state[f"{name}.weight"] = (layer.weight.float() + delta.float()).to(layer.weight.dtype).cpu()
            if layer.bias is not None:
                state[f"{name}.bias"] = layer.bias.detach().cpu()
        inside = tuple(f"{name}." for name in lora)
        for key, value in base.state_dict().items():
            if not key.startswith(inside):
                state[key] = value.detach().cpu()
    with torch.device("meta"):
        merged = type(base).from_config(base.config)
    merged.load_state_dict(state, strict=True, assign=True)
    fix_meta_rope(merged)
    return merged.eval()


def lora_layers(transformer, adapter: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of `adapter` with each layer's scale (alpha / rank) folded into lora_B, and the diffusers adapter
    metadata that says so (lora_alpha = r: scale 1).

    Why fold: the clients read alpha differently, and only a scale of 1 means the same to all of them. diffusers
    reads it from the header's `lora_adapter_metadata` and, without one, takes alpha = rank; ComfyUI ignores the
    header and reads a `<module>.alpha` tensor, scale 1 without one; and an `.alpha` tensor beside diffusers-style
    `transformer.` keys sends diffusers' Qwen-Image loader down its conversion path for other trainers' files, which
    then matches no module (NoMatchingPeftModuleError). With B·(alpha/r) and no `.alpha` tensor every client applies
    exactly the trained delta B·A·alpha/r, at any alpha (fractional included), and a user's strength (diffusers'
    `set_adapters(..., weights)`, ComfyUI's strength_model) multiplies that delta in both. The metadata (only the
    keys every peft LoraConfig takes) makes diffusers build that scale-1 adapter instead of inferring it."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import get_peft_model_state_dict

    layers = dict(get_peft_model_state_dict(transformer, adapter_name=adapter))
    folded = set()
    for name, module in transformer.named_modules():
        if isinstance(module, BaseTunerLayer) and adapter in getattr(module, "scaling", {}):
            scale = float(module.scaling[adapter])
            for key in (f"{name}.lora_B.weight", f"{name}.lora_B.bias"):  # peft scales lora_B's bias too
                if key in layers:
                    layers[key] = (layers[key].float() * scale).to(layers[key].dtype)
                    folded.add(key)
    unfolded = sorted(k for k in layers if ".lora_B." in k and k not in folded)
    if unfolded:  # a layer whose scale was not found would load at the wrong strength: never write it
        raise RuntimeError(f"LoRA export: no scale found for {unfolded[0]} ({len(unfolded)} tensors)")
    ranks = {v.shape[0] for k, v in layers.items() if k.endswith(".lora_A.weight")}
    if len(ranks) != 1:
        raise RuntimeError(f"LoRA export: one rank expected, the adapter has {sorted(ranks)}")
    rank = ranks.pop()
    targets = sorted({k.rsplit(".lora_", 1)[0] for k in layers})
    return layers, {"r": rank, "lora_alpha": rank, "target_modules": targets}


def export_qwen_student(roles, folder: Path, timesteps: list[float], info: dict, base_folder: Path) -> Path:
    """Write `folder` (layout above) atomically: a temporary sibling renamed into place."""
    from diffusers import QwenImagePipeline

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}-tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    ema = roles.ema
    lora = None
    if getattr(ema, "adapter", None):  # roles.mode lora: an AdapterView on the shared base
        layers, metadata = lora_layers(ema.base.transformer, ema.adapter)
        QwenImagePipeline.save_lora_weights(tmp, transformer_lora_layers=layers, weight_name=LORA_FILE,
                                            transformer_lora_adapter_metadata=metadata)
        lora = LORA_FILE
        transformer = merged_transformer(ema)
    else:
        transformer = ema.transformer
    transformer.save_pretrained(tmp / "transformer")
    student_scheduler(timesteps).save_pretrained(tmp / "scheduler")
    meta = {"format": 1, "family": FAMILY, "base": str(Path(base_folder).resolve()), "lora": lora,
            "timesteps": [float(t) for t in timesteps], **info}
    (tmp / STUDENT_FILE).write_text(json.dumps(meta, indent=1, default=str) + "\n")
    return swap_in(tmp, folder)


def qwen_student_folder(path: str | Path) -> Path | None:
    """The export folder of a qwen-image student (a run folder or the export itself), else None; a student.json
    that does not read (not UTF-8, not a JSON object) is a UserError naming it."""
    path = Path(path)
    for folder in (path, path / "student"):
        meta = folder / STUDENT_FILE
        if meta.is_file() and read_json_object(meta, "student record").get("family") == FAMILY:
            return folder
    return None


def read_student_record(folder: Path) -> dict:
    """student.json of a qwen-image export with every key sampling needs checked (records.py), and its base."""
    from flashdistill.distill.export import check_timesteps
    from flashdistill.models.qwen_image import image_size, read_model_index

    path = folder / STUDENT_FILE
    meta = read_record(path, "student record", {"base": str, "timesteps": list, "resolution": (int, list)})
    check_timesteps(meta["timesteps"], str(path))
    image_size(meta["resolution"], f"student record {path}: key 'resolution'")
    try:
        read_model_index(meta["base"])
    except UserError as err:
        raise UserError(f"student record {path}: key 'base' names no usable base pipeline folder: {err}") from None
    return meta


class QwenStudent:
    """An exported qwen-image student sampled by diffusers' pipelines: `sample(texts, sources, seeds, nfe)` gives
    images (H, W, 3) float32 in [0, 1] (sources: (H, W, 3) arrays of any size, or None), as `flashdistill
    generate` expects, at `size` (height, width): the training size, or what `set_resolution` asked for."""

    source_side = None  # an edit source goes to the pipelines as it is: they resize it, aspect kept

    def __init__(self, path: str | Path, name: str | None = None):
        folder = qwen_student_folder(path)
        if folder is None:
            raise UserError(f"{path}: no qwen-image student here ({STUDENT_FILE} with family {FAMILY})")
        self.folder, self.meta = folder, read_student_record(folder)
        self.name = name or str(path)
        self.timesteps = [float(t) for t in self.meta["timesteps"]]
        self.set_resolution(self.meta["resolution"], f"student record {folder / STUDENT_FILE}: key 'resolution'")
        self.default_nfe = len(self.timesteps)
        self._pipes: dict[bool, object] = {}

    def set_resolution(self, value, where: str) -> None:
        """Sample at `value` (a side, or (height, width)) instead of the training size (the pipelines take any
        multiple of 16); `resolution` is its record form (a side for a square). `where` leads a refusal."""
        from flashdistill.models.qwen_image import image_size, size_value

        self.size = image_size(value, where)
        self.resolution = size_value(self.size)

    def pipeline(self, edit: bool):
        """The base's pipeline class (edit) or QwenImagePipeline (T2I) with the student transformer and scheduler."""
        import diffusers
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel

        from flashdistill.models.qwen_image import KIND, load_pretrained, read_model_index
        from flashdistill.models.qwen_tiny import load_processor

        if edit in self._pipes:
            return self._pipes[edit]
        base = Path(self.meta["base"])
        cls_name = read_model_index(base)["_class_name"]
        if edit and KIND[cls_name] == "t2i":
            raise UserError(f"{self.folder}: the base {base} is a QwenImagePipeline; it cannot edit")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        kwargs = {} if KIND[cls_name] == "t2i" else {"processor": load_processor(base)}
        check_same_architecture(self.folder / "transformer", base / "transformer")
        transformer = load_pretrained(QwenImageTransformer2DModel, self.folder / "transformer")
        scheduler = load_pretrained(FlowMatchEulerDiscreteScheduler, self.folder / "scheduler")
        pipe = load_pretrained(getattr(diffusers, cls_name), base, dtype=torch.float32, transformer=transformer,
                             scheduler=scheduler, **kwargs)
        if not edit and not isinstance(pipe, QwenImagePipeline):
            pipe = QwenImagePipeline.from_pipe(pipe)
        pipe.set_progress_bar_config(disable=True)
        self._pipes[edit] = pipe
        return pipe

    def check_source(self, size: tuple[int, int], what: str = "edit source") -> None:
        """Refuse a source (width, height) the base's edit pipeline cannot resize (models/qwen_image.py
        `check_edit_source`: e.g. 4000x1), before anything runs; `what` leads the message (e.g. `--image PATH`)."""
        from flashdistill.models.qwen_image import KIND, check_edit_source, read_model_index

        kind = KIND[read_model_index(self.meta["base"])["_class_name"]]
        if kind != "t2i":  # a T2I base is refused by `pipeline`, naming it
            check_edit_source(size, kind, what=what)

    def sigmas(self, nfe: int) -> list[float] | None:
        """What to pass as `sigmas=` for `nfe` steps: None at the full NFE of a constant-shift scheduler."""
        from flashdistill.sampling import sub_schedule

        steps = sub_schedule(self.timesteps, nfe)
        s = constant_shift(self.timesteps)
        if s is None:
            return steps
        if nfe == len(self.timesteps):
            return None  # the pipeline's own linspace, shifted by the scheduler: exactly the student's times
        return [t / (s - (s - 1) * t) for t in steps]  # the unshifted values the scheduler's shift maps to steps

    @torch.no_grad()
    def sample(self, texts, sources, seeds, nfe=None, categories=None, cfg_scale=None) -> list[np.ndarray]:
        from PIL import Image

        nfe = nfe or self.default_nfe
        out = []
        for text, source, seed in zip(texts, sources, seeds):
            pipe = self.pipeline(source is not None)
            kwargs = dict(prompt=text, height=self.size[0], width=self.size[1], num_inference_steps=nfe,
                          sigmas=self.sigmas(nfe), true_cfg_scale=1.0,  # a DMD student runs unguided
                          generator=torch.Generator().manual_seed(int(seed)),
                          output_type="np")
            if source is not None:  # as it is: the pipeline resizes it (aspect kept), if it can
                self.check_source((source.shape[1], source.shape[0]))
                kwargs["image"] = Image.fromarray((np.clip(source, 0, 1) * 255).round().astype(np.uint8))
            torch.manual_seed(int(seed))  # the scheduler's re-noising draws come from the global generator
            image = pipe(**kwargs).images[0]
            if not np.isfinite(image).all():  # the pipeline's clamp keeps NaN: it would be saved as black
                raise UserError(f"model {self.name} produced NaN/Inf for seed {seed}: its weights are broken, e.g. "
                                f"saved by a diverged run; no image was written")
            # 8 bits as diffusers rounds them (what a diffusers user's `.images[0]` holds), so a PNG written of it
            # is the diffusers user's PNG pixel for pixel: imageio.to_uint8 maps k/255 back to k exactly
            pil = pipe.image_processor.numpy_to_pil(image[None])[0]
            out.append(np.asarray(pil, dtype=np.float32) / 255.0)
        return out


def check_same_architecture(student: Path, base: Path) -> None:
    """The exported transformer has the base's configuration (the base's text encoder and VAE feed it). A key one
    config.json lacks takes the class's default, as from_pretrained gives it (a hub config written by an older
    diffusers lacks newer keys)."""
    import inspect

    from diffusers import QwenImageTransformer2DModel

    params = inspect.signature(QwenImageTransformer2DModel.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    mine, theirs = (read_json_object(folder / "config.json", "transformer config") for folder in (student, base))

    def value(config: dict, key: str):
        v = config.get(key, defaults.get(key))
        return list(v) if isinstance(v, tuple) else v

    for key in sorted(defaults):
        if value(mine, key) != value(theirs, key):
            raise UserError(f"{student / 'config.json'}: {key} = {value(mine, key)!r}, but the base {base} has "
                            f"{value(theirs, key)!r}: this student was not distilled from that base")
