"""Condition caches on tiny Qwen-Image folders: what is read back equals what the family encodes; resumable after a
kill; a missing entry names the command; the CLI reports bad input with exit code 2."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from flashdistill.cli import main
from flashdistill.data.cache import ConditionCache, build_cache
from flashdistill.data.files import read_edits, read_prompts
from flashdistill.errors import UserError
from flashdistill.models.qwen_image import QwenImageParts
from flashdistill.models.qwen_tiny import write_tiny_folder

AREA = 64 * 64  # small VAE area for the sources: fast


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    prompts = root / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": p, "category": c}) for p, c in [
        ("a lake at dawn", "landscape"), ("a red sign that reads OPEN", "text"), ("a woman with a hat", "portrait"),
        ("a lake at dawn", "landscape")]) + "\n")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).save(root / f"{name}.png")
    edits = root / "edits.jsonl"
    edits.write_text("\n".join(json.dumps({"image": f"{n}.png", "instruction": i, "category": "style"})
                               for n, i in [("a", "make it blue"), ("b", "add a hat")]) + "\n")
    folder = write_tiny_folder(root / "edit-plus", "edit-plus")
    family = QwenImageParts(folder, parts=("text", "vae"))
    return root, family, read_prompts(prompts), read_edits(edits)


def test_reads_back_what_the_family_encodes(setup, one_thread):
    root, family, prompts, edits = setup
    counts = build_cache(root / "c1", family, prompts, edits, "flashdistill cache X", vae_area=AREA,
                         dtype="float32", batch_size=2, progress=False)
    assert counts == {"prompts": 4, "edits": 2, "encoded": 6, "entries": 6, "damaged": []}  # 3 prompts + neg + 2
    cache = ConditionCache(root / "c1")
    texts = [p.text for p in prompts[:3]]
    emb, mask = cache.prompts(texts)
    want_emb, want_mask = family.encode_prompts(texts)
    assert torch.equal(mask, want_mask) and torch.allclose(emb, want_emb, atol=1e-5)
    neg, _ = cache.negative(2)
    assert neg.shape[0] == 2 and torch.allclose(neg[0], family.encode_prompts([" "])[0][0], atol=1e-5)
    batch = cache.edits(edits)
    one = family.encode_edit("add a hat", edits[1].load_source(), area=AREA)
    assert batch["latents"].shape == (2, 16, 8, 8)
    assert torch.allclose(batch["latents"][1], one["latents"], atol=1e-6)
    n = one["emb"].shape[0]
    assert torch.allclose(batch["emb"][1, :n], one["emb"], atol=1e-5) and int(batch["mask"][1].sum()) == n
    assert torch.allclose(batch["neg"][1][batch["neg_mask"][1]], one["neg"], atol=1e-5)
    # a second run has nothing to do
    again = build_cache(root / "c1", family, prompts, edits, "x", vae_area=AREA, dtype="float32", progress=False)
    assert again["encoded"] == 0


def test_resumes_after_a_kill(setup, one_thread):
    root, family, prompts, edits = setup

    class Killed(Exception):
        pass

    class DiesAfterTwo:
        """The family, killed during its third encoding call."""

        def __init__(self):
            self.calls, self.folder = 0, family.folder

        def identity(self):
            return family.identity()

        def encode_prompts(self, texts):
            self.calls += 1
            if self.calls == 3:
                raise Killed
            return family.encode_prompts(texts)

    with pytest.raises(Killed):
        build_cache(root / "c2", DiesAfterTwo(), prompts, [], "x", dtype="float32", batch_size=1, shard_size=1,
                    progress=False)
    assert len(ConditionCache(root / "c2")) == 2 and not list((root / "c2").glob(".tmp-*"))
    resumed = build_cache(root / "c2", family, prompts, [], "x", dtype="float32", batch_size=1, progress=False)
    assert resumed["encoded"] == 2 and resumed["entries"] == 4
    emb, _ = ConditionCache(root / "c2").prompts([p.text for p in prompts])
    assert torch.allclose(emb, family.encode_prompts([p.text for p in prompts])[0], atol=1e-5)


def test_missing_entry_names_the_command(setup, one_thread):
    root, family, prompts, edits = setup
    build_cache(root / "c3", family, prompts[:1], [], "flashdistill cache r.yaml --out c3", progress=False)
    cache = ConditionCache(root / "c3")
    with pytest.raises(UserError, match=r"no cached prompt 'a woman with a hat': run `flashdistill cache r.yaml"):
        cache.prompts(["a woman with a hat"])
    with pytest.raises(UserError, match="index.json is missing"):
        ConditionCache(root / "nowhere")
    with pytest.raises(UserError, match="dtype"):
        build_cache(root / "c3", family, prompts, [], "x", dtype="float32", progress=False)


def test_cli(setup, tmp_path, capsys, one_thread):
    root, family, _, _ = setup
    out = tmp_path / "cache"
    code = main(["cache", "--model", str(family.folder), "--prompts", str(root / "prompts.jsonl"), "--edits",
                 str(root / "edits.jsonl"), "--out", str(out), "--vae-area", str(AREA)])
    assert code == 0 and "encoded 6 now, 6 entries in all" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert index["entries"] == 6 and index["command"].endswith(f"--out {out} --vae-area {AREA}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "category": "c"}\n{"prompt": 1, "category": "c"}\n')
    assert main(["cache", "--model", str(family.folder), "--prompts", str(bad), "--out", str(out)]) == 2
    assert f"{bad}:2: 'prompt' must be a string" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teachers: {{base: {family.folder}}}\ndata: {{prompts: {root / 'prompts.jsonl'}}}\n")
    assert main(["cache", str(recipe), "--out", str(tmp_path / "c4")]) == 0
    assert ConditionCache(tmp_path / "c4").meta["command"] == f"flashdistill cache {recipe} --out {tmp_path / 'c4'}"


@pytest.mark.parametrize("device, word", [("banana", "'banana' is not a device"), ("cuda:99", "CUDA device(s)"),
                                          ("meta", "use cpu, cuda"), ("cuda", "CUDA device(s)")])
def test_a_device_that_is_not_here_is_one_line(tmp_path, capsys, device, word):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SystemExit) as exit_:  # refused while parsing: before any model is read
        main(["cache", "--model", str(tmp_path), "--prompts", "p.jsonl", "--out", str(tmp_path / "c"),
              "--device", device])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith("error: ") and "\n" not in err and word in err
