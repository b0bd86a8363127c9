"""LoRA files checked against the base before peft sees them (models/lora_check.py): every file that does not fit
(wrong shapes, inconsistent rank, keys of no module, a full transformer, no LoRA tensors, garbage bytes, NaN) is
one UserError naming the recipe key, the file and the tensor; `distill` ends in that line with exit code 2."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from flashdistill.errors import UserError
from flashdistill.models.lora_check import check_lora_file

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
KEY = "teachers.specialized"
A = "transformer.transformer_blocks.0.attn.to_q.lora_A.weight"
B = "transformer.transformer_blocks.0.attn.to_q.lora_B.weight"


def _base_weights(root):
    return load_file(str(root / "base" / "transformer" / "diffusion_pytorch_model.safetensors"))


VARIANTS = {  # name -> (state dict from (good LoRA, base weights), what the error says)
    "wrong shape": (lambda sd, base: {**sd, A: torch.zeros(4, 7)},
                    f"{A!r} has shape (4, 7); the base's transformer_blocks.0.attn.to_q takes 32 inputs"),
    "inconsistent rank": (lambda sd, base: {**sd, A: torch.zeros(3, 32)},
                          f"{B!r} has shape (32, 4); with rank 3 (its lora_A)"),
    "key of no module": (lambda sd, base: {k.replace("to_q", "to_qq"): v for k, v in sd.items()},
                         "names 'transformer_blocks.0.attn.to_qq', which the base transformer does not have"),
    "not a linear layer": (lambda sd, base: {**sd, "transformer.transformer_blocks.0.attn.norm_q.lora_A.weight":
                                             torch.zeros(4, 16)}, "a RMSNorm, not a linear layer"),
    "missing partner": (lambda sd, base: {k: v for k, v in sd.items() if k != B}, f"{A!r} has no partner"),
    "full transformer": (lambda sd, base: base, "holds a full transformer's weights"),
    "full transformer, prefixed": (lambda sd, base: {"transformer." + k: v for k, v in base.items()},
                                   "holds a full transformer's weights"),
    "no LoRA tensors": (lambda sd, base: {"foo": torch.zeros(2)}, "holds no LoRA tensors (e.g. 'foo')"),
    "no tensors": (lambda sd, base: {}, "holds no tensors"),
    "another trainer's keys": (lambda sd, base: {k.removeprefix("transformer."): v for k, v in sd.items()},
                               "is not a transformer LoRA tensor in diffusers' layout"),
    "DoRA magnitude": (lambda sd, base: {**sd, A.replace("lora_A.weight", "lora_magnitude_vector"): torch.ones(32)},
                       "is none of MODULE.lora_A.weight"),
    "NaN": (lambda sd, base: {k: v * float("nan") for k, v in sd.items()}, "NaN/Inf values"),
    "Inf": (lambda sd, base: {**sd, B: torch.full((32, 4), float("inf"))}, f"{B!r} holds 128 NaN/Inf values"),
    "integer tensor": (lambda sd, base: {**sd, A: torch.zeros(4, 32, dtype=torch.int32)}, "not floating point"),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_lora_that_does_not_fit_is_named(qwen_world, tmp_path, name):
    root, _ = qwen_world
    build, message = VARIANTS[name]
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in build(load_file(str(root / "specialized.safetensors")),
                                                   _base_weights(root)).items()}, str(path))
    with pytest.raises(UserError) as err:
        check_lora_file(path, root / "base" / "transformer", KEY)
    assert str(err.value).startswith(f"{KEY}: {path}: ") and message in str(err.value), str(err.value)


@pytest.mark.parametrize("content", [b"", b"garbage" * 20, b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"])
def test_garbage_bytes(qwen_world, tmp_path, content):
    root, _ = qwen_world
    (tmp_path / "x.safetensors").write_bytes(content)
    with pytest.raises(UserError, match=f"{KEY}: .*x.safetensors: not a readable safetensors file"):
        check_lora_file(tmp_path / "x.safetensors", root / "base" / "transformer", KEY)


def test_good_lora_passes_and_a_changed_file_is_checked_again(qwen_world, tmp_path):
    root, _ = qwen_world
    path = tmp_path / "lora.safetensors"
    shutil.copy(root / "specialized.safetensors", path)
    assert check_lora_file(path, root / "base" / "transformer", KEY) == path
    assert check_lora_file(path, root / "base" / "transformer", KEY) == path  # remembered
    sd = load_file(str(path))
    save_file({**sd, B: sd[B] * float("nan")}, str(path))  # same size, new content: not the remembered file
    with pytest.raises(UserError, match="NaN/Inf"):
        check_lora_file(path, root / "base" / "transformer", KEY)
    save_file(sd, str(path), metadata={"lora_adapter_metadata": "{broken"})
    with pytest.raises(UserError, match="lora_adapter_metadata is not a JSON object"):
        check_lora_file(path, root / "base" / "transformer", KEY)


def test_distill_refuses_a_nan_or_misfit_lora_teacher(qwen_world, tmp_path, capsys):
    """Item 5/7 of issue 24: a NaN specialized teacher is refused at load, naming the key and the file."""
    from flashdistill.cli.distill import main_distill

    root, sets = qwen_world
    sd = load_file(str(root / "specialized.safetensors"))
    for name, bad in (("nan", {k: v * float("nan") for k, v in sd.items()}), ("shape", {**sd, A: torch.zeros(4, 7)})):
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in bad.items()}, str(path))
        args = [str(RECIPE), "--out", str(tmp_path / name), "--set", *sets, f"teachers.specialized={path}",
                "dmd.bf16=false", "run.device=cpu", "roles.lora_rank=4"]
        assert main_distill(args) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "Traceback" not in err
        assert f"error: {KEY}: {path}: " in err and ("NaN/Inf" if name == "nan" else "has shape (4, 7)") in err


def test_embedded_lora_teacher_of_nan_is_refused(tmp_path):
    from flashdistill.models.mmdit import FlowModel
    from flashdistill.models.shipped import teacher_folder

    folder = tmp_path / "spec"
    shutil.copytree(teacher_folder("teacher:specialized"), folder)
    weights = folder / "transformer" / "pytorch_lora_weights.safetensors"
    save_file({k: v * float("nan") for k, v in load_file(str(weights)).items()}, str(weights))
    assert json.loads((folder / "flashdistill_model.json").read_text())["model"] == "mmdit-lora"
    with pytest.raises(UserError, match=f"{weights}: tensor .* holds .* NaN/Inf values"):
        FlowModel.from_pretrained(folder)
