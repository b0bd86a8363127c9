"""A Qwen-Image LoRA file checked against its base before peft or diffusers see it.

Handed a file that does not fit, diffusers' `load_lora_adapter` raises peft's raw errors (a size mismatch, an
`IndexError`), or worse loads part of it or nothing at all with a logged warning (keys that match no module, keys
without the `transformer.` prefix, a full transformer's weights), and a LoRA of NaN loads fine and poisons the
teacher. `check_lora_file(path, base_transformer_folder, key)` refuses all of these with one UserError naming the
recipe key, the file and the tensor:

- the file reads as safetensors (not truncated, not another format);
- its tensors are diffusers' Qwen-Image LoRA layout (`QwenImagePipeline.save_lora_weights`, what
  `flashdistill qwen random-lora` and the Qwen-Image trainers write): `transformer.MODULE.lora_A.weight` (r, in),
  `transformer.MODULE.lora_B.weight` (out, r) and, with peft's `lora_bias`, `transformer.MODULE.lora_B.bias`;
- every MODULE is a linear layer of the base transformer, built on the meta device from its `config.json` (no
  weight is read), and the shapes fit it, with one rank per module;
- every tensor is finite (NaN or Inf in an adapter makes the teacher's every output NaN);
- the `lora_adapter_metadata` diffusers may store in the header is a JSON object.

`check_finite(path, where)` is the NaN/Inf part alone, for any adapter file (models/lora.py's mmdit-lora teachers).

A file that passes is remembered by (path, size, mtime, base), so the several callers of a run's `resolve` read it
once. Tests: `pytest tests/test_lora_check.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flashdistill.errors import UserError, one_line

PREFIX = "transformer."
SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_B.bias": "bias"}
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
_passed: set[tuple] = set()
_bases: dict[tuple, dict[str, tuple]] = {}


def base_linears(folder: str | Path, key: str) -> dict[str, tuple]:
    """MODULE -> (class name, in_features, out_features) of every submodule of the transformer whose config is
    `folder/config.json`, built on the meta device (in/out are None for a module that is not linear)."""
    from diffusers import QwenImageTransformer2DModel

    config_path = Path(folder) / "config.json"
    if not config_path.is_file():
        raise UserError(f"{key}: the base transformer has no config ({config_path} is missing)")
    stamp = (str(config_path.resolve()), config_path.stat().st_mtime_ns, config_path.stat().st_size)
    if stamp not in _bases:
        try:
            config = QwenImageTransformer2DModel.load_config(str(folder))
            with torch.device("meta"):
                model = QwenImageTransformer2DModel.from_config(config)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise UserError(f"{key}: the base transformer config {config_path} does not build a "
                            f"QwenImageTransformer2DModel ({one_line(err)[:160]})") from None
        _bases[stamp] = {name: (type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None))
                         for name, m in model.named_modules() if name}
    return _bases[stamp]


def _layout(names: list[str], base: dict[str, tuple], where: str) -> dict[str, dict[str, str]]:
    """MODULE -> {A|B|bias: tensor name}; a UserError for a file that is not a transformer LoRA of this base."""
    if not names:
        raise UserError(f"{where}: holds no tensors; a LoRA file holds transformer.MODULE.lora_A/lora_B.weight")
    if not any(".lora_" in n for n in names):
        plain = [n.removeprefix(PREFIX).rsplit(".", 1)[0] for n in names]
        if sum(p in base for p in plain) > len(names) / 2:
            raise UserError(f"{where}: holds a full transformer's weights ({names[0]}, ...), not a LoRA; a teacher "
                            f"that is a whole model is given as its pipeline folder")
        raise UserError(f"{where}: holds no LoRA tensors (e.g. {names[0]!r}); expected diffusers' LoRA keys "
                        f"transformer.MODULE.lora_A.weight / lora_B.weight")
    modules: dict[str, dict[str, str]] = {}
    for name in names:
        if not name.startswith(PREFIX):
            raise UserError(f"{where}: tensor {name!r} is not a transformer LoRA tensor in diffusers' layout "
                            f"(transformer.MODULE.lora_A.weight); a LoRA of another trainer's format loads after "
                            f"conversion by QwenImagePipeline.lora_state_dict + save_lora_weights")
        suffix = next((s for s in SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise UserError(f"{where}: tensor {name!r} is none of MODULE.lora_A.weight, MODULE.lora_B.weight, "
                            f"MODULE.lora_B.bias")
        module = name[len(PREFIX): -len(suffix)]
        if module not in base:
            raise UserError(f"{where}: tensor {name!r} names {module!r}, which the base transformer does not have "
                            f"(a LoRA of another model?)")
        if base[module][1] is None:
            raise UserError(f"{where}: tensor {name!r} adapts {module!r}, a {base[module][0]}, not a linear layer")
        modules.setdefault(module, {})[SUFFIXES[suffix]] = name
    return modules


def _check_shapes(handle, modules: dict, base: dict, where: str) -> None:
    """lora_A (r, in) and lora_B (out, r) of each module: in/out from the base, one rank r for both."""
    for module, parts in modules.items():
        for part in ("A", "B"):
            if part not in parts:
                other = next(iter(parts.values()))
                raise UserError(f"{where}: {other!r} has no partner {PREFIX}{module}.lora_{part}.weight")
        _, n_in, n_out = base[module]
        a, b = (list(handle.get_slice(parts[p]).get_shape()) for p in ("A", "B"))
        if len(a) != 2 or a[0] < 1 or a[1] != n_in:
            raise UserError(f"{where}: {parts['A']!r} has shape {tuple(a)}; the base's {module} takes {n_in} "
                            f"inputs, so lora_A must be (rank, {n_in})")
        if b != [n_out, a[0]]:
            raise UserError(f"{where}: {parts['B']!r} has shape {tuple(b)}; with rank {a[0]} (its lora_A) and "
                            f"{n_out} outputs of the base's {module}, lora_B must be ({n_out}, {a[0]})")
        if "bias" in parts and list(handle.get_slice(parts["bias"]).get_shape()) != [n_out]:
            raise UserError(f"{where}: {parts['bias']!r} must have shape ({n_out},)")


def _check_values(handle, names: list[str], where: str) -> None:
    for name in names:
        tensor = handle.get_tensor(name)
        if not tensor.is_floating_point():
            raise UserError(f"{where}: tensor {name!r} is {tensor.dtype}, not floating point")
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise UserError(f"{where}: tensor {name!r} holds {bad} NaN/Inf values of {tensor.numel()}: this LoRA "
                            f"would make every output of its teacher NaN")


def check_finite(path: str | Path, where: str) -> None:
    """Every tensor of the safetensors file `path` finite and floating point (any LoRA layout); `where` leads the
    UserError (e.g. the embedded family's mmdit-lora adapters, whose layout peft checks itself)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            _check_values(handle, list(handle.keys()), where)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{where}: not a readable safetensors file ({one_line(err)[:160]})") from None


def check_lora_file(path: str | Path, base_transformer_folder: str | Path, key: str) -> Path:
    """`path` if it is a LoRA file that fits the base transformer (see the module docstring); else a UserError
    `KEY: PATH: what is wrong`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    where = f"{key}: {path}"
    if not path.is_file():
        raise UserError(f"{where}: " + ("is a folder, not a LoRA file" if path.is_dir() else "no such file"))
    stat = path.stat()
    stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, str(Path(base_transformer_folder).resolve()))
    if stamp in _passed:
        return path
    base = base_linears(base_transformer_folder, key)
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = sorted(handle.keys())
            metadata = handle.metadata() or {}
            modules = _layout(names, base, where)
            _check_shapes(handle, modules, base, where)
            _check_values(handle, names, where)
    except (SafetensorError, OSError) as err:
        raise UserError(f"{where}: not a readable safetensors file ({one_line(err)[:160]})") from None
    if METADATA_KEY in metadata:
        try:
            ok = isinstance(json.loads(metadata[METADATA_KEY]), dict)
        except (ValueError, RecursionError):
            ok = False
        if not ok:
            raise UserError(f"{where}: the header's {METADATA_KEY} is not a JSON object (diffusers reads the LoRA's "
                            f"settings from it)")
    _passed.add(stamp)
    return path
