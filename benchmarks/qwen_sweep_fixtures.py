"""Fixtures of the Qwen-Image sweep (`benchmarks/malformed_qwen.py`), built in a temporary folder in about a minute.

`build(root, full)` returns name -> path of:
- the good world: a tiny edit-plus pipeline folder (`base`), a random LoRA on it (`lora`), prompt and edit files
  with their images, and (full) their condition cache (`cache`) and a finished two-iteration distillation run
  (`run`) whose export is `student`;
- damaged copies of each kind of input: data files (`prompts:*`, `edits:*`), pipeline folders (`folder:*`), LoRA
  files (`lora:*`), caches (`cache:*`), exported students (`student:*`), transformer configs (`config:*`), recipes
  (`recipe:*`) and images (`image:*`);
- (full) runs to resume after their inputs changed (`resume:*`, each on its own copy of the world) and runs whose
  checkpoints are damaged (`ckpt:*`).
Everything is made offline from `flashdistill qwen tiny-folder` / `write_random_lora`; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "qwen-image-flash.yaml"
FAST = ["roles.lora_rank=4", "dmd.batch_size=2", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
        "dmd.iterations=2", "run.checkpoint_every=1", "data.resolution=64"]
PROMPTS = [("a lake at dawn", "landscape"), ("an old man smiling", "portrait"), ("a sign that reads OPEN", "text")]
EDITS = [("a.png", "make it winter", "style"), ("b.png", "write CLOSED on the sign", "text_editing")]


def sets(f: dict, **keys) -> list[str]:
    """The recipe overrides that name the world's inputs (`base=...` etc. replace one), plus FAST."""
    names = {"base": "teachers.base", "lora": "teachers.specialized", "prompts": "data.prompts",
             "edits": "data.edits", "cache": "run.text_cache"}
    paths = {k: keys.get(k, f.get(k)) for k in names}
    return [f"{names[k]}={v}" for k, v in paths.items() if v is not None] + FAST


def _quiet(fn, *args, **kwargs):
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _data(folder: Path, images: bool = True) -> dict[str, Path]:
    """prompts.jsonl, edits.jsonl and their images in `folder`."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n" for p, c in PROMPTS))
    rng = np.random.default_rng(0)
    for name, _, _ in EDITS:
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / name)
    (folder / "edits.jsonl").write_text("".join(json.dumps({"image": n, "instruction": i, "category": c}) + "\n"
                                                for n, i, c in EDITS))
    return {"prompts": folder / "prompts.jsonl", "edits": folder / "edits.jsonl"}


def world(root: Path) -> dict[str, Path]:
    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    f = {"recipe": RECIPE, "base": _quiet(write_tiny_folder, root / "base", "edit-plus")}
    f["lora"] = _quiet(write_random_lora, f["base"], root / "specialized.safetensors", rank=4)
    f.update(_data(root / "data"))
    return f


def build_cache(f: dict, out: Path, **keys) -> Path:
    from flashdistill.cli import main

    argv = ["cache", str(RECIPE), "--set", *sets(f, **keys, cache=out), "--vae-area", "4096", "--dtype", "float32"]
    code = _quiet(main, argv)
    if code != 0:
        raise RuntimeError(f"fixture cache {out}: exit {code}")
    return out


def train(f: dict, out: Path, iterations: int = 2, **keys) -> Path:
    from flashdistill.distill.recipe import load_recipe
    from flashdistill.distill.trainer import train_distill

    recipe = load_recipe(RECIPE, sets(f, **keys) + [f"dmd.iterations={iterations}"])
    _quiet(train_distill, recipe, out)
    return out


# ---- damaged inputs --------------------------------------------------------------------------------------------
def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose header declares width x height pixels (PIL refuses it as a decompression bomb) and holds none."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00"))
                     + chunk(b"IEND", b""))
    return path


def images(root: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    f = {"image:bomb": png_bomb(root / "bomb.png"), "image:text": root / "notes.png",
         "image:4000x1": root / "wide.png", "image:grey16": root / "grey16.png", "image:tall": root / "tall.png",
         "image:folder": root / "folder.png"}
    f["image:text"].write_text("not an image\n")
    Image.new("RGB", (4000, 1), (200, 10, 10)).save(f["image:4000x1"])
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)).save(f["image:grey16"])
    Image.new("RGB", (32, 64), (10, 200, 10)).save(f["image:tall"])
    f["image:folder"].mkdir()
    return f


def data_files(root: Path, img: dict[str, Path]) -> dict[str, Path]:
    """The world's prompt and edit files plus one bad line each (the last); `img`: images() and world()."""
    root.mkdir(parents=True, exist_ok=True)
    good_prompts, good_edits = img["prompts"].read_bytes(), img["edits"].read_text()
    prompts = {"latin1": "{\"prompt\": \"un lac en été\", \"category\": \"landscape\"}\n".encode("latin-1"),
               "binary": bytes(range(256)) * 4, "bad-json": b'{"prompt": "b",\n', "list-line": b"[1, 2]\n",
               "missing-field": b'{"prompt": "a lake"}\n',
               "unknown-field": b'{"prompt": "a", "category": "landscape", "seed": 3}\n',
               "empty-text": b'{"prompt": "  ", "category": "landscape"}\n',
               "number": b'{"prompt": 5, "category": "landscape"}\n', "empty-file": None,
               "deep": ("[" * 20000 + "]" * 20000 + "\n").encode(),
               "lone-surrogate": b'{"prompt": "\\ud800 a lake", "category": "landscape"}\n',  # valid JSON, no text
               "uncached": b'{"prompt": "never cached", "category": "landscape"}\n'}
    f = {}
    for name, line in prompts.items():
        f[f"prompts:{name}"] = root / f"prompts-{name}.jsonl"
        f[f"prompts:{name}"].write_bytes(b"" if line is None else good_prompts + line)
    good_edits = "".join(json.dumps({**json.loads(line), "image": str(img["edits"].parent / json.loads(line)["image"])})
                         + "\n" for line in good_edits.splitlines())
    for name, image in (("image-missing", root / "nope.png"), ("image-text", img["image:text"]),
                        ("image-bomb", img["image:bomb"]), ("image-4000x1", img["image:4000x1"]),
                        ("image-grey16", img["image:grey16"]), ("image-folder", img["image:folder"]),
                        ("mixed-aspect", img["image:tall"])):  # mixed: a tall source beside square ones
        f[f"edits:{name}"] = root / f"edits-{name}.jsonl"
        f[f"edits:{name}"].write_text(good_edits + json.dumps({"image": str(image), "instruction": "blue",
                                                               "category": "style"}) + "\n")
    f["edits:lone-surrogate"] = root / "edits-lone-surrogate.jsonl"  # json.dumps writes the \\udc00 escape
    f["edits:lone-surrogate"].write_text(good_edits + json.dumps({"image": str(img["image:text"]), "instruction":
                                                                  "blue \udc00", "category": "style"}) + "\n")
    return f


def folders(root: Path, base: Path) -> dict[str, Path]:
    """Copies of the good pipeline folder, each damaged in one way."""
    weights = Path("transformer") / "diffusion_pytorch_model.safetensors"
    index = json.loads((base / "model_index.json").read_text())
    changes = {
        "index-not-json": lambda d: (d / "model_index.json").write_text('{"_class_name": '),
        "index-not-utf8": lambda d: (d / "model_index.json").write_bytes('{"_class_name": "é"}'.encode("latin-1")),
        "index-list": lambda d: (d / "model_index.json").write_text("[1, 2]"),
        "index-no-class": lambda d: (d / "model_index.json").write_text(json.dumps(
            {k: v for k, v in index.items() if k != "_class_name"})),
        "index-unknown-class": lambda d: (d / "model_index.json").write_text(json.dumps(
            {**index, "_class_name": "FluxPipeline"})),
        "index-deep": lambda d: (d / "model_index.json").write_text("[" * 20000 + "]" * 20000),
        "weights-truncated": lambda d: (d / weights).write_bytes((base / weights).read_bytes()[:5000]),
        "weights-garbage": lambda d: (d / weights).write_bytes(b"\x00garbage" * 64),
        "weights-missing": lambda d: (d / weights).unlink(),
        "config-missing": lambda d: (d / "transformer" / "config.json").unlink(),
        "config-bad-type": lambda d: (d / "transformer" / "config.json").write_text(json.dumps(
            {**json.loads((base / "transformer" / "config.json").read_text()), "num_layers": "two"})),
        "text-encoder-garbage": lambda d: [p.write_bytes(b"garbage" * 32)
                                           for p in (d / "text_encoder").glob("*.safetensors")],
        "nan": _nan_weights,
    }
    f = {}
    for name, change in changes.items():
        f[f"folder:{name}"] = root / f"base-{name}"
        shutil.copytree(base, f[f"folder:{name}"])
        change(f[f"folder:{name}"])
    return f


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    save_file({k: v.fill_(float("nan")) if k.startswith("proj_out") else v for k, v in state.items()}, str(path))


def loras(root: Path, lora: Path, base: Path) -> dict[str, Path]:
    """LoRA files that do not fit the base, or are no LoRA at all."""
    import torch
    from safetensors.torch import load_file, save_file

    root.mkdir(parents=True, exist_ok=True)
    state = load_file(str(lora))
    first_a = next(k for k in sorted(state) if "lora_A" in k)
    first_b = first_a.replace("lora_A", "lora_B")
    tensors = {
        "wrong-shapes": {**state, first_b: torch.zeros(2 * state[first_b].shape[0], state[first_b].shape[1])},
        "inconsistent-rank": {**state, first_a: torch.zeros(8, state[first_a].shape[1])},
        "no-matching-keys": {k.replace("transformer_blocks", "nowhere_blocks"): v for k, v in state.items()},
        "no-lora-tensors": {"foo": torch.zeros(3)},
        "nan": {k: torch.full_like(v, float("nan")) for k, v in state.items()},
    }
    f = {}
    for name, tensors_ in tensors.items():
        f[f"lora:{name}"] = root / f"{name}.safetensors"
        save_file(tensors_, str(f[f"lora:{name}"]))
    f["lora:full-transformer"] = root / "full-transformer.safetensors"
    shutil.copyfile(base / "transformer" / "diffusion_pytorch_model.safetensors", f["lora:full-transformer"])
    for name, data in (("garbage", b"\x00garbage" * 64), ("truncated", lora.read_bytes()[:300]), ("empty", b"")):
        f[f"lora:{name}"] = root / f"{name}.safetensors"
        f[f"lora:{name}"].write_bytes(data)
    f["lora:folder"] = root / "folder.safetensors"
    f["lora:folder"].mkdir()
    return f


def caches(root: Path, cache: Path) -> dict[str, Path]:
    """Copies of the good condition cache, each damaged in one way (shards and index.json)."""
    index = json.loads((cache / "index.json").read_text())
    changes = {
        "index-not-json": lambda d: (d / "index.json").write_text('{"model_id": '),
        "index-not-utf8": lambda d: (d / "index.json").write_bytes('{"model": "é"}'.encode("latin-1")),
        "index-list": lambda d: (d / "index.json").write_text("[]"),
        "index-no-model-id": lambda d: (d / "index.json").write_text(json.dumps(
            {k: v for k, v in index.items() if k != "model_id"})),
        "index-no-vae-area": lambda d: (d / "index.json").write_text(json.dumps(
            {k: v for k, v in index.items() if k != "vae_area"})),
        "index-deep": lambda d: (d / "index.json").write_text("[" * 20000 + "]" * 20000),
        "other-model": lambda d: (d / "index.json").write_text(json.dumps({**index, "model_id": "0" * 32})),
        "empty": lambda d: [p.unlink() for p in d.iterdir()],
    }
    for kind in ("shard-truncated", "shard-garbage"):
        for use in ("distill", "recache"):
            changes[f"{kind}-{use}"] = _damage_shard(kind)
    f = {}
    for name, change in changes.items():
        f[f"cache:{name}"] = root / f"cache-{name}"
        shutil.copytree(cache, f[f"cache:{name}"])
        change(f[f"cache:{name}"])
    return f


def _damage_shard(kind: str):
    def change(folder: Path) -> None:
        for shard in folder.glob("shard-*.safetensors"):
            data = shard.read_bytes()
            shard.write_bytes(data[: len(data) // 2] if kind == "shard-truncated" else b"\xff" * 8 + data[8:])
    return change


def students(root: Path, student: Path) -> dict[str, Path]:
    """Copies of an exported Qwen-Image student, each damaged in one way."""
    meta = json.loads((student / "student.json").read_text())
    write = lambda d, obj: (d / "student.json").write_text(json.dumps(obj))  # noqa: E731
    changes = {
        "json-broken": lambda d: (d / "student.json").write_text('{"family": "qwen-image", '),
        "json-not-utf8": lambda d: (d / "student.json").write_bytes(b'{"family": "qwen-image", "base": "\xe9"}'),
        "json-list": lambda d: (d / "student.json").write_text("[1]"),
        "no-resolution": lambda d: write(d, {k: v for k, v in meta.items() if k != "resolution"}),
        "no-base": lambda d: write(d, {k: v for k, v in meta.items() if k != "base"}),
        "timesteps-word": lambda d: write(d, {**meta, "timesteps": "four"}),
        "base-gone": lambda d: write(d, {**meta, "base": str(root / "no-such-base")}),
        "weights-garbage": lambda d: (d / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(
            b"garbage" * 32),
        "scheduler-missing": lambda d: shutil.rmtree(d / "scheduler"),
    }
    f = {}
    for name, change in changes.items():
        f[f"student:{name}"] = root / f"student-{name}"
        shutil.copytree(student, f[f"student:{name}"])
        change(f[f"student:{name}"])
    return f


def configs_and_recipes(root: Path, base: Path) -> dict[str, Path]:
    """Transformer configs for `plan`, and recipes that YAML reads wrongly or not at all."""
    root.mkdir(parents=True, exist_ok=True)
    config = json.loads((base / "transformer" / "config.json").read_text())
    texts = {"config:layers-0": json.dumps({**config, "num_layers": 0}),
             "config:layers-word": json.dumps({**config, "num_layers": "two"}),
             "config:layers-200k": json.dumps({**config, "num_layers": 200_000}),
             "config:list": "[1, 2, 3]", "config:not-utf8": '{"num_layers": "é"}'}
    shipped = RECIPE.read_text()
    bomb = "".join(f"  - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))
    texts.update({
        "recipe:duplicate-group": shipped + "dmd:\n  lr: 0.5\n",
        "recipe:duplicate-key": shipped.replace("  lr: 1.0e-4", "  lr: 1.0e-4\n  lr: 0.5", 1),
        "recipe:alias-bomb": shipped.replace("guidance:\n", "guidance:\n  bomb:\n  - &l0 [1.0, 1.0, 1.0]\n" + bomb, 1),
        "recipe:deep": "teachers: " + "[" * 20000 + "]" * 20000 + "\n",
        "recipe:guidance-1e0": shipped.replace("default: {base: 1.0}", "default: {base: 1e0}", 1),
    })
    f = {}
    for name, text in texts.items():
        f[name] = root / (name.replace(":", "-") + (".json" if name.startswith("config") else ".yaml"))
        f[name].write_bytes(text.encode("latin-1" if name.endswith("not-utf8") else "utf-8"))
    return f


def world_paths(f: dict, root: Path) -> dict[str, Path]:
    """The inputs of a copy of the world in `root` (the cache is shared: it is keyed by content)."""
    return {"base": root / "base", "lora": root / "specialized.safetensors", "prompts": root / "data" / "prompts.jsonl",
            "edits": root / "data" / "edits.jsonl", "cache": f["cache"]}


def copy_world(f: dict, root: Path) -> dict[str, Path]:
    """The base, the LoRA and the data files copied to `root`."""
    shutil.copytree(f["base"], root / "base")
    shutil.copyfile(f["lora"], root / "specialized.safetensors")
    shutil.copytree(f["prompts"].parent, root / "data")
    return world_paths(f, root)


def runs(f: dict, root: Path) -> dict[str, Path]:
    """A finished run, copies of it to damage or to write into, and one run per changed input to resume."""
    import numpy as np
    from PIL import Image

    from flashdistill.models.qwen_tiny import write_random_lora, write_tiny_folder

    r = {"run": train(f, root / "run")}
    r["student"] = r["run"] / "student"
    for name in ("teacher", "distill", "cache"):  # another command pointed at this finished run must leave it be
        r[f"victim:{name}"] = root / f"victim-{name}"
        shutil.copytree(r["run"], r[f"victim:{name}"])
    for name in ("newest-truncated", "all-truncated", "state-torn", "lr-changed"):
        r[f"ckpt:{name}"] = root / f"ckpt-{name}"
        shutil.copytree(r["run"], r[f"ckpt:{name}"])
    for ckpt in ("checkpoint", "checkpoint.prev"):
        for name, damage in (("all-truncated", lambda p: p.write_bytes(p.read_bytes()[:100])),
                             ("state-torn", lambda p: p.write_text("{torn"))):
            target = "student.safetensors" if name == "all-truncated" else "state.json"
            damage(r[f"ckpt:{name}"] / ckpt / target)
    newest = r["ckpt:newest-truncated"] / "checkpoint" / "student.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    other = _quiet(write_tiny_folder, root / "other-base", "edit-plus", seed=1)
    weights = Path("transformer") / "diffusion_pytorch_model.safetensors"
    changes = {
        "base-swapped": lambda w: shutil.copyfile(other / weights, w["base"] / weights),
        "lora-replaced": lambda w: _replace_lora(w, write_random_lora),
        "accepted": lambda w: _replace_lora(w, write_random_lora),
        "prompts-edited": lambda w: w["prompts"].write_text(w["prompts"].read_text().replace("dawn", "dusk")),
        "image-edited": lambda w: Image.fromarray((np.random.default_rng(9).random((64, 64, 3)) * 255).astype(
            np.uint8)).save(w["prompts"].parent / "a.png"),
    }
    for name, change in changes.items():
        w = copy_world(f, root / f"resume-{name}")
        r[f"resume:{name}"] = train(w, root / f"resume-{name}" / "run")
        r[f"resume-world:{name}"] = w["base"].parent
        change(w)
    return r


def _replace_lora(w: dict, write_random_lora) -> None:
    new = w["lora"].with_name("new.safetensors")
    _quiet(write_random_lora, w["base"], new, rank=4, seed=1)
    new.replace(w["lora"])


def build(root: Path, full: bool = True) -> dict[str, Path]:
    """Every fixture (see the module docstring); `full=False` skips the cache and the runs (and their cases)."""
    root.mkdir(parents=True, exist_ok=True)
    f = world(root / "world")
    f.update(images(root / "images"))
    f.update(data_files(root / "data-bad", f))
    f.update(folders(root / "folders", f["base"]))
    f.update(loras(root / "loras", f["lora"], f["base"]))
    f.update(configs_and_recipes(root / "texts", f["base"]))
    f["victim:lora-file"] = root / "victim-lora.safetensors"
    shutil.copyfile(f["lora"], f["victim:lora-file"])
    f["victim:pipeline"] = root / "victim-pipeline"
    shutil.copytree(f["base"], f["victim:pipeline"])
    f["file"] = root / "a-file"
    f["file"].write_text("a file where a folder is wanted\n")
    f["vlm-cases"] = root / "vlm-cases.jsonl"  # one T2I case per category; the text one trips fail-one-category
    vlm = (("landscape", "a lake"), ("portrait", "a face"), ("text", "FAILME sign"))
    f["vlm-cases"].write_text("".join(json.dumps({"id": f"{c}-0", "category": c, "prompt": p, "seed": 0}) + "\n"
                                      for c, p in vlm))
    f["out"] = root / "out"
    f["cache"] = root / "world" / "cache"  # named in every recipe; built (full) or not
    if full:
        build_cache(f, f["cache"])
        f["cache:mixed-aspect"] = build_cache(f, root / "cache-mixed-aspect", edits=f["edits:mixed-aspect"])
        f.update(caches(root / "caches", f["cache"]))
        f.update(runs(f, root / "runs"))
        f.update(students(root / "students", f["student"]))
    return f
