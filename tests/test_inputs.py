"""A run's input identity: --resume is refused, naming the input, when a teacher's weights or a data file changed
(runtime/inputs.py, distill/inputs.py); --accept-changed-inputs continues on purpose;
what does not change the content passes."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from flashdistill.distill.inputs import input_fingerprint
from flashdistill.distill.pairs import INDEX, PairsSection
from flashdistill.errors import UserError
from flashdistill.runtime.inputs import FULL_HASH_BYTES, check_inputs, input_changes, weight_fingerprint


class Family:
    """The one thing input_fingerprint asks of a family: the path a teacher spec names."""

    def resolve(self, spec, key):
        return Path(spec)


def _world(root: Path):
    """A base 'pipeline folder' (a large and a small weight file, a config, a README), a LoRA file, data files."""
    base = root / "base"
    (base / "transformer").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _safetensors(base / "transformer" / "big.safetensors", seed=0)
    (base / "vae.safetensors").write_bytes(rng.bytes(1000))
    (base / "transformer" / "config.json").write_text('{"num_layers": 2}')
    (base / "README.md").write_text("a model card")
    (root / "lora.safetensors").write_bytes(rng.bytes(2000))
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": "a lake", "category": "landscape"}) + "\n")
    Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "a.png")
    (root / "edits.jsonl").write_text(json.dumps({"image": "a.png", "instruction": "blue", "category": "s"}) + "\n")
    (root / "pairs").mkdir()
    (root / "pairs" / INDEX).write_text(json.dumps({"n": 4, "shards": {"0": "ab12"}}))
    data = SimpleNamespace(prompts=str(root / "prompts.jsonl"), edits=str(root / "edits.jsonl"))
    return SimpleNamespace(teachers={"base": str(base), "specialized": str(root / "lora.safetensors")}, data=data,
                           pairs=PairsSection(folder=str(root / "pairs"), weight=1.0))


@pytest.fixture
def world(tmp_path):
    recipe = _world(tmp_path)
    return tmp_path, recipe, input_fingerprint(recipe, Family())


def _safetensors(path: Path, seed: int, size: int = FULL_HASH_BYTES + (3 << 20)) -> None:
    """A file laid out as safetensors (8-byte length, JSON header, tensor bytes) with random tensor bytes."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + np.random.default_rng(seed).bytes(size))


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("change, key, named", [
    # weights swapped for others of the same layout (same size, same header): the sampled blocks differ
    (lambda r: _safetensors(r / "base" / "transformer" / "big.safetensors", seed=1), "teachers.base",
     "transformer/big.safetensors changed"),
    (lambda r: _flip(r / "base" / "vae.safetensors", 500), "teachers.base", "vae.safetensors changed"),
    (lambda r: (r / "base" / "transformer" / "config.json").write_text('{"num_layers": 3}'), "teachers.base",
     "config.json changed"),
    (lambda r: (r / "base" / "extra.safetensors").write_bytes(b"x"), "teachers.base", "extra.safetensors is new"),
    (lambda r: _flip(r / "lora.safetensors", 7), "teachers.specialized", "lora.safetensors changed"),
    (lambda r: (r / "prompts.jsonl").write_text(json.dumps({"prompt": "a lake!", "category": "landscape"}) + "\n"),
     "data.prompts", "prompts.jsonl changed"),  # edited in place, same size
    (lambda r: Image.new("RGB", (8, 8), (10, 20, 31)).save(r / "a.png"), "data.edits", "a.png changed"),
    # a pairs cache extended or rebuilt: its index (which holds every shard's sha256) differs
    (lambda r: (r / "pairs" / INDEX).write_text(json.dumps({"n": 8, "shards": {"0": "ab12", "1": "cd34"}})),
     "pairs.folder", "index.json changed"),
])
def test_a_changed_input_is_refused_by_name(world, change, key, named):
    root, recipe, saved = world
    change(root)
    now = input_fingerprint(recipe, Family())
    with pytest.raises(UserError, match=rf"{key}: .*{named}.*--accept-changed-inputs"):
        check_inputs(saved, now)
    assert any(named in c for c in check_inputs(saved, now, accept=True))  # on purpose: reported, not refused


def test_what_leaves_the_content_alone_passes(world):
    root, recipe, saved = world
    (root / "base" / "README.md").write_text("edited model card")  # not a weight or config file
    for path in root.rglob("*"):  # a copy to another disk: new modification times, same bytes
        os.utime(path, (1, 1))
    assert input_changes(saved, input_fingerprint(recipe, Family())) == []
    check_inputs(saved, input_fingerprint(recipe, Family()))
    assert input_changes(None, saved) == []  # a checkpoint from before fingerprints: nothing to compare with


def test_large_weights_are_read_in_samples(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    _safetensors(path, seed=1, size=64 << 20)
    read = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: _Counting(real_open(*a, **k), read))
    before = weight_fingerprint(path)
    monkeypatch.undo()
    assert sum(read) < 8 << 20  # ~6 MiB of 64: the header, both edges, 64 blocks
    assert before.startswith(f"{path.stat().st_size}:")
    copy = tmp_path / "copy.safetensors"
    shutil.copyfile(path, copy)
    assert weight_fingerprint(copy) == before
    _flip(path, path.stat().st_size - 10)  # the last MiB
    assert weight_fingerprint(path) != before


class _Counting:
    """A file object that adds the bytes each read returns to `read`."""

    def __init__(self, f, read):
        self.f, self.read_bytes = f, read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def seek(self, offset):
        return self.f.seek(offset)

    def read(self, n=-1):
        data = self.f.read(n)
        self.read_bytes.append(len(data))
        return data


def test_resume_refuses_a_replaced_lora_teacher(qwen_world, tmp_path, one_thread):
    """The whole path: a checkpoint records its inputs; replacing the specialized LoRA file in place stops
    `--resume` with one line naming it; --accept-changed-inputs continues and records the new inputs."""
    from flashdistill.cli.distill import main_distill
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.models.qwen_tiny import write_random_lora
    from flashdistill.runtime.checkpoint import read_state

    root, sets = qwen_world
    lora = tmp_path / "specialized.safetensors"
    shutil.copyfile(root / "specialized.safetensors", lora)
    recipe = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
    sets = [s for s in sets if not s.startswith("teachers.specialized=")] + [
        f"teachers.specialized={lora}", "roles.lora_rank=4", "dmd.batch_size=2", "dmd.bf16=false", "run.device=cpu",
        "run.threads=1", "dmd.iterations=1"]
    out = tmp_path / "run"
    assert main_distill([str(recipe), "--out", str(out), "--set", *sets]) == 0
    saved = read_state(out / "checkpoint")["meta"]["inputs"]
    assert set(saved["inputs"]) == {"teachers.base", "teachers.specialized", "data.prompts", "data.edits"}
    write_random_lora(root / "base", tmp_path / "other.safetensors", rank=4, seed=1)
    os.replace(tmp_path / "other.safetensors", lora)
    more = [*sets, "dmd.iterations=2"]
    with pytest.raises(UserError, match=r"teachers\.specialized: .*specialized\.safetensors changed"):
        check_inputs(saved, input_fingerprint(load_recipe(recipe, more), _qwen_family(load_recipe(recipe, more))))
    assert main_distill([str(recipe), "--out", str(out), "--resume", "--set", *more]) == 2
    assert main_distill([str(recipe), "--out", str(out), "--resume", "--accept-changed-inputs", "--set", *more]) == 0
    assert read_state(out / "checkpoint")["meta"]["inputs"]["inputs"]["teachers.specialized"] != \
        saved["inputs"]["teachers.specialized"]


def _qwen_family(recipe):
    from flashdistill.distill.families import family_for

    return family_for(recipe)
