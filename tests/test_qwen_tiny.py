"""Tiny Qwen-Image pipeline folders: diffusers loads them and generates; seeded; tokenizer ids match the encoder."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from flashdistill.cli import main
from flashdistill.models.qwen_tiny import SPECIAL_TOKENS, load_processor, torchvision_works, write_tiny_folder

PIPELINES = {"t2i": "QwenImagePipeline", "edit": "QwenImageEditPipeline", "edit-plus": "QwenImageEditPlusPipeline"}


def _load(folder, kind):
    import diffusers

    cls = getattr(diffusers, PIPELINES[kind])
    kwargs = {} if kind == "t2i" or torchvision_works() else {"processor": load_processor(folder)}
    pipe = cls.from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", ["t2i", "edit", "edit-plus"])
def test_pipeline_loads_and_generates(tmp_path, kind, one_thread):
    folder = tmp_path / kind
    assert main(["qwen", "tiny-folder", "--kind", kind, "--out", str(folder)]) == 0
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == PIPELINES[kind]
    assert ("processor" in index) == (kind != "t2i")
    assert not list(folder.rglob("*.bin")), "safetensors only"
    pipe = _load(folder, kind)
    args = dict(prompt="a red cat", negative_prompt=" ", true_cfg_scale=2.0, height=32, width=32,
                num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    if kind != "t2i":
        args["image"] = Image.new("RGB", (32, 32), (200, 10, 10))
    image = pipe(**args).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        h.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_seeded_and_deterministic(tmp_path):
    a = write_tiny_folder(tmp_path / "a", "t2i", seed=3)
    b = write_tiny_folder(tmp_path / "b", "t2i", seed=3)
    c = write_tiny_folder(tmp_path / "c", "t2i", seed=4)
    assert _digest(a) == _digest(b) != _digest(c)


def test_tokenizer_offline_matches_encoder(tmp_path):
    from transformers import Qwen2_5_VLConfig, Qwen2Tokenizer

    folder = write_tiny_folder(tmp_path / "e", "edit")
    tok = Qwen2Tokenizer.from_pretrained(folder / "tokenizer")
    text = "<|im_start|>user\nmake it blue, s'il vous plaît<|im_end|>"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text  # byte-level: every text round-trips
    cfg = Qwen2_5_VLConfig.from_pretrained(folder / "text_encoder")
    for token, field in [("<|image_pad|>", "image_token_id"), ("<|video_pad|>", "video_token_id"),
                         ("<|vision_start|>", "vision_start_token_id"), ("<|vision_end|>", "vision_end_token_id")]:
        assert tok.convert_tokens_to_ids(token) == getattr(cfg, field)
    assert all(tok.convert_tokens_to_ids(t) < cfg.text_config.vocab_size for t in SPECIAL_TOKENS)
    proc = load_processor(folder)
    out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (40, 40))],
               padding=True, return_tensors="pt")
    n_image_tokens = int((out["input_ids"] == cfg.image_token_id).sum())
    assert n_image_tokens == int(out["image_grid_thw"].prod()) // 4  # merge 2x2


def test_existing_folder_is_refused(tmp_path, capsys):
    write_tiny_folder(tmp_path / "x", "t2i")
    assert main(["qwen", "tiny-folder", "--out", str(tmp_path / "x")]) == 2
    assert "model_index.json" in capsys.readouterr().err


@pytest.fixture(scope="module")
def t2i_folder(tmp_path_factory):
    return write_tiny_folder(tmp_path_factory.mktemp("lora-base") / "base", "t2i")


@pytest.mark.parametrize("args, word", [(["--rank", "1000000000"], "--rank 1000000000: at most 32"),
                                        (["--std", "1e300"], "--std"), (["--std", "2"], "--std")])
def test_random_lora_values_that_blow_up_are_refused(t2i_folder, tmp_path, capsys, args, word):
    out = tmp_path / "l.safetensors"
    assert main(["qwen", "random-lora", "--base", str(t2i_folder), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and word in err
    assert not out.exists()  # refused before anything was read or written


def test_random_lora_never_overwrites(t2i_folder, tmp_path, capsys):
    from safetensors.torch import load_file

    folder, existing = tmp_path / "x.safetensors", tmp_path / "mine.safetensors"
    folder.mkdir()
    existing.write_bytes(b"someone's LoRA")
    for out, what in ((folder, "is a folder"), (existing, "is a file already")):
        assert main(["qwen", "random-lora", "--base", str(t2i_folder), "--out", str(out)]) == 2
        assert what in capsys.readouterr().err
    assert existing.read_bytes() == b"someone's LoRA"
    fresh = tmp_path / "new.safetensors"
    assert main(["qwen", "random-lora", "--base", str(t2i_folder), "--out", str(fresh), "--std", "1"]) == 0
    assert all(torch.isfinite(t).all() for t in load_file(str(fresh)).values())
