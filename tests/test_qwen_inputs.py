"""Bad files on the Qwen-Image path end in one `error:` line naming the file and key (exit code 2), on tiny folders:
a damaged model_index.json, cache index.json or student.json; damaged cache shards (named; `flashdistill cache`
sets them aside and encodes their entries again); sources the pipelines cannot take (4000x1) refused before
anything is encoded; edit sources of several aspect ratios and items missing from the cache refused before the
first iteration; `generate --cfg` / `--resolution` on a distilled student refused or honoured, never ignored."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flashdistill.cli import main
from flashdistill.cli.distill import main_distill
from flashdistill.data.cache import ConditionCache
from flashdistill.errors import UserError

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
FAST = ["roles.lora_rank=4", "dmd.batch_size=4", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
        "dmd.iterations=2", "run.checkpoint_every=1"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _replace(sets: list[str], **values) -> list[str]:
    """`sets` with KEY=VALUE replaced for the dotted keys given as key__sub=value."""
    new = {k.replace("__", "."): v for k, v in values.items()}
    return [s for s in sets if s.split("=", 1)[0] not in new] + [f"{k}={v}" for k, v in new.items()]


# ---- model_index.json -----------------------------------------------------------------------------------------
INDEX = {"_class_name": "QwenImageEditPlusPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
         "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
         "tokenizer": ["transformers", "Qwen2Tokenizer"], "transformer": ["diffusers", "QwenImageTransformer2DModel"],
         "vae": ["diffusers", "AutoencoderKLQwenImage"], "processor": ["transformers", "Qwen2VLProcessor"]}


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n", "not UTF-8 text"),
    (b"[]", "must hold a JSON object, got a list"),
    (b"[" * 20000 + b"]" * 20000, "nested more than 100 levels deep"),
    (json.dumps({k: v for k, v in INDEX.items() if k != "_class_name"}).encode(), "missing key '_class_name'"),
    (json.dumps({k: v for k, v in INDEX.items() if k != "vae"}).encode(), "missing key 'vae'"),
    (json.dumps({**INDEX, "transformer": 5}).encode(), "key 'transformer' must be a list"),
    (json.dumps({**INDEX, "processor": ["transformers"]}).encode(), "key 'processor' must be [library, class]"),
])
def test_damaged_model_index(qwen_world, tmp_path, capsys, content, message):
    root, _ = qwen_world
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_bytes(content)
    code = main(["cache", "--model", str(tmp_path / "m"), "--prompts", str(root / "prompts.jsonl"), "--out",
                 str(tmp_path / "c")])
    assert code == 2
    _one_error_line(capsys, str(tmp_path / "m" / "model_index.json"), message)


@pytest.mark.parametrize("part, content", [("tokenizer/tokenizer_config.json", b"{"),
                                           ("text_encoder/model.safetensors", b"garbage" * 10)])
def test_damaged_component_names_the_folder(qwen_world, tmp_path, capsys, part, content):
    root, _ = qwen_world
    folder = tmp_path / "base"
    shutil.copytree(root / "base", folder)
    (folder / part).write_bytes(content)
    code = main(["cache", "--model", str(folder), "--prompts", str(root / "prompts.jsonl"), "--out",
                 str(tmp_path / "c")])
    assert code == 2
    _one_error_line(capsys, f"{folder}: the QwenImageEditPlusPipeline does not load from it (")


# ---- the condition cache: index.json and shards ---------------------------------------------------------------
@pytest.fixture
def cache_copy(qwen_world, tmp_path):
    root, sets = qwen_world
    shutil.copytree(root / "cache", tmp_path / "cache")
    return tmp_path / "cache", _replace(sets, run__text_cache=tmp_path / "cache")


@pytest.mark.parametrize("key", ["model_id", "vae_area", "command"])
def test_damaged_cache_index_names_the_key(cache_copy, capsys, key):
    cache, sets = cache_copy
    index = json.loads((cache / "index.json").read_text())
    (cache / "index.json").write_text(json.dumps({k: v for k, v in index.items() if k != key}))
    with pytest.raises(UserError, match=rf"cache index {cache / 'index.json'}: missing key '{key}'"):
        ConditionCache(cache)
    assert main(["cache", str(RECIPE), "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 2
    _one_error_line(capsys, "index.json", f"missing key '{key}'")
    (cache / "index.json").write_bytes(b"\xff" * 10)
    assert main_distill([str(RECIPE), "--out", str(cache.parent / "run"), "--set", *sets, *FAST]) == 2
    _one_error_line(capsys, "index.json", "not UTF-8")


@pytest.mark.parametrize("damage", ["truncated", "garbage header"])
def test_damaged_shard_named_then_reencoded_by_cache(cache_copy, capsys, damage):
    cache, sets = cache_copy
    (shard,) = cache.glob("shard-*.safetensors")
    before = ConditionCache(cache).prompts(["a lake at dawn"])[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\xff" * 64 + data[64:])
    with pytest.raises(UserError, match=rf"{shard}: damaged cache shard .*: run `flashdistill cache"):
        ConditionCache(cache)
    assert main_distill([str(RECIPE), "--out", str(cache.parent / "run"), "--set", *sets, *FAST]) == 2
    _one_error_line(capsys, str(shard), "damaged cache shard")
    assert main(["cache", str(RECIPE), "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    out = capsys.readouterr()
    assert f"warning: {shard}: damaged cache shard" in out.err and "encoded 9 now, 9 entries in all" in out.out
    assert (cache / f"damaged-{shard.name}").read_bytes() != data  # kept, out of the way, never deleted
    after = ConditionCache(cache).prompts(["a lake at dawn"])[0]
    assert torch.allclose(before, after, atol=1e-6)


# ---- sources the pipelines cannot take; edit sizes and missing entries before the first iteration ---------------
@pytest.mark.parametrize("key", ["data.prompts", "data.edits", "eval.prompts", "eval.edits"])
def test_a_lone_surrogate_in_a_data_file_is_one_line_naming_it(qwen_world, capsys, key):
    """Defect: `{"prompt": "\\ud800 ..."}` (valid JSON) ended `flashdistill cache` in a UnicodeEncodeError
    traceback; every reader of user text now names the file and line, exit code 2."""
    root, sets = qwen_world
    field = "instruction" if key.endswith("edits") else "prompt"
    lines = (root / f"{key.split('.')[1]}.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    lines[1] = json.dumps({**row, field: "\ud800" + row[field]})  # written as the 6 characters \ud800
    bad = root / f"surrogate-{key}.jsonl"  # beside the edits' images
    bad.write_text("\n".join(lines) + "\n")
    argv = ["cache", str(RECIPE), "--set", *_replace(sets, **{key.replace(".", "__"): bad}), "--vae-area", "4096",
            "--dtype", "float32"]
    assert main(argv) == 2
    _one_error_line(capsys, f"{bad}:2: '{field}' holds '\\ud800' at character 1, a lone UTF-16 surrogate")


def test_zero_side_source_refused_before_encoding(qwen_world, tmp_path, capsys):
    root, _ = qwen_world
    Image.new("RGB", (4000, 1), (200, 10, 10)).save(tmp_path / "wide.png")
    edits = tmp_path / "edits.jsonl"
    edits.write_text("".join(json.dumps({"image": name, "instruction": "x", "category": "style"}) + "\n"
                             for name in (str(root / "a.png"), "wide.png")))
    code = main(["cache", "--model", str(root / "base"), "--edits", str(edits), "--out", str(tmp_path / "c"),
                 "--vae-area", "4096"])
    assert code == 2
    _one_error_line(capsys, f"{edits}:2: image {tmp_path / 'wide.png'} is 4000x1 px", "crop or pad it")
    assert not list((tmp_path / "c").glob("shard-*"))  # refused before the first source was encoded


@pytest.fixture(scope="module")
def mixed_sizes(qwen_world, tmp_path_factory):
    """The world's edits with one source of another aspect ratio, and their cache."""
    root, sets = qwen_world
    tmp = tmp_path_factory.mktemp("mixed")
    Image.fromarray((np.random.default_rng(1).random((32, 96, 3)) * 255).astype(np.uint8)).save(tmp / "wide.png")
    lines = [json.loads(line) for line in (root / "edits.jsonl").read_text().splitlines()]
    lines[2]["image"] = str(tmp / "wide.png")
    for line in lines[:2]:
        line["image"] = str(root / line["image"])
    (tmp / "edits.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    sets = _replace(sets, data__edits=tmp / "edits.jsonl", run__text_cache=tmp / "cache")
    assert main(["cache", str(RECIPE), "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    return tmp, sets


def test_mixed_edit_sizes_refused_before_the_first_iteration(mixed_sizes, capsys):
    from flashdistill.data.files import read_edits, read_prompts
    from flashdistill.data.sources import FileSource
    from flashdistill.distill.recipe import load_recipe

    tmp, sets = mixed_sizes
    recipe = load_recipe(RECIPE, sets)
    cache, prompts, edits = ConditionCache(tmp / "cache"), read_prompts(recipe.data.prompts), read_edits(
        recipe.data.edits)
    with pytest.raises(UserError, match=r"data\.edits: the edit sources have 2 latent sizes, e.g. .* -> 16x8x8 and "
                                        r".*wide\.png \(.*edits\.jsonl:3\) -> 16x4x12; a batch of 2 rows per rank"):
        FileSource(recipe.task_mix(), 0, prompts, edits, cache, (16, 8, 8), rows_per_rank=2)
    source = FileSource(recipe.task_mix(), 0, prompts, edits, cache, (16, 8, 8))  # rows per rank unknown yet
    assert source.batch(0, 4, slice(0, 1)).cond.text.shape[0] == 1  # one row per rank: sizes never meet
    with pytest.raises(UserError, match="latent sizes"):
        source.batch(0, 4, slice(0, 4))  # the first batch of a 4-row rank, whatever it draws
    out = tmp / "run"
    assert main_distill([str(RECIPE), "--out", str(out), "--set", *sets, *FAST]) == 2
    _one_error_line(capsys, "latent sizes", "wide.png")
    log = out / "log.jsonl"
    assert not log.exists() or not log.read_text().strip()  # not one iteration ran
    assert not (out / "checkpoint" / "state.json").exists()


def test_items_missing_from_the_cache_refused_before_the_first_iteration(qwen_world, tmp_path, capsys):
    root, sets = qwen_world
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((root / "prompts.jsonl").read_text() + json.dumps({"prompt": "a new one",
                                                                           "category": "text"}) + "\n")
    out = tmp_path / "run"
    assert main_distill([str(RECIPE), "--out", str(out), "--set", *_replace(sets, data__prompts=prompts),
                         *FAST]) == 2
    _one_error_line(capsys, "no cached prompt 'a new one'", "run `flashdistill cache")
    assert not (out / "checkpoint" / "state.json").exists()


# ---- exported students: student.json, --cfg, --resolution -----------------------------------------------------
@pytest.fixture(scope="module")
def student(qwen_world, tmp_path_factory):
    """An export folder as distill writes it (the base's transformer as the student's): sampling needs no run."""
    from flashdistill.distill.qwen_export import student_scheduler

    root, _ = qwen_world
    folder = tmp_path_factory.mktemp("student") / "student"
    shutil.copytree(root / "base" / "transformer", folder / "transformer")
    student_scheduler([1.0, 0.9, 0.75, 0.5]).save_pretrained(folder / "scheduler")
    meta = {"format": 1, "family": "qwen-image", "base": str(root / "base"), "lora": None,
            "timesteps": [1.0, 0.9, 0.75, 0.5], "resolution": 64}
    (folder / "student.json").write_text(json.dumps(meta))
    return folder, meta


def _variant(student, tmp_path, meta=None, raw: bytes | None = None) -> Path:
    folder, good = student
    copy = tmp_path / "student"
    shutil.copytree(folder, copy)
    (copy / "student.json").write_bytes(raw if raw is not None else json.dumps(meta).encode())
    return copy


def _generate(model, out, *extra) -> int:
    return main(["generate", "--model", str(model), "--prompt", "a lake at dawn", "--out", str(out), *extra])


DROP = object()


@pytest.mark.parametrize("change, message", [
    ({"resolution": DROP}, "missing key 'resolution'"),
    ({"resolution": "64"}, "key 'resolution' must be an integer"),
    ({"resolution": 50}, "key 'resolution' must be a side or [height, width], each a multiple of 16"),
    ({"resolution": [48, 50]}, "got [48, 50]"),
    ({"resolution": [48]}, "key 'resolution' must be a side or [height, width]"),
    ({"timesteps": DROP}, "missing key 'timesteps'"),
    ({"timesteps": [0.5, 0.9]}, "'timesteps' must be a decreasing list"),
    ({"base": DROP}, "missing key 'base'"),
    ({"base": "/nowhere"}, "key 'base' names no usable base pipeline folder"),
])
def test_damaged_student_record(student, tmp_path, capsys, change, message):
    meta = {k: v for k, v in {**student[1], **change}.items() if v is not DROP}
    copy = _variant(student, tmp_path, meta)
    assert _generate(copy, tmp_path / "g.png") == 2
    _one_error_line(capsys, str(copy / "student.json"), message)


@pytest.mark.parametrize("raw, message", [(b"\xff\xfe", "not UTF-8"),
                                          (b"[" * 20000, "nested more than 100 levels deep"),
                                          (b'"qwen"', "must hold a JSON object")])
def test_unreadable_student_record(student, tmp_path, capsys, raw, message):
    copy = _variant(student, tmp_path, raw=raw)
    assert _generate(copy, tmp_path / "g.png") == 2
    _one_error_line(capsys, str(copy / "student.json"), message)


def test_student_cfg_refused_resolution_honoured(student, tmp_path, capsys):
    folder, _ = student
    assert _generate(folder, tmp_path / "a.png", "--cfg", "3") == 2
    _one_error_line(capsys, "--cfg 3", "distilled student")
    assert _generate(folder, tmp_path / "a.png", "--resolution", "50") == 2
    _one_error_line(capsys, "--resolution 50", "multiple of 16")
    assert _generate(folder, tmp_path / "a.png", "--resolution", "48x50") == 2
    _one_error_line(capsys, "--resolution 48x50", "multiple of 16")
    with pytest.raises(SystemExit) as stopped:  # argparse's refusal: one line, exit code 2
        _generate(folder, tmp_path / "a.png", "--resolution", "48x")
    assert stopped.value.code == 2
    _one_error_line(capsys, "--resolution", "must be an integer, got ''")
    assert _generate(folder, tmp_path / "a.png") == 0 and _generate(folder, tmp_path / "b.png", "--resolution",
                                                                      "48") == 0
    assert _generate(folder, tmp_path / "c.png", "--resolution", "32x48") == 0
    for name, size in (("a.png", (64, 64)), ("b.png", (48, 48)), ("c.png", (48, 32))):  # own, then asked (W, H)
        with Image.open(tmp_path / name) as img:
            assert img.size == size


def test_embedded_student_refuses_cfg_and_another_resolution(tmp_path, capsys):
    from flashdistill.distill.export import export_student
    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    torch.manual_seed(0)
    export_student(FlowModel(MMDiTConfig.tiny()), tmp_path / "s", [1.0, 0.75, 0.5, 0.25], {})
    assert _generate(tmp_path / "s", tmp_path / "a.png", "--cfg", "2") == 2
    _one_error_line(capsys, "--cfg 2", "distilled student")
    assert _generate(tmp_path / "s", tmp_path / "a.png", "--resolution", "64") == 2
    _one_error_line(capsys, "--resolution 64", "works at 32 px only")
    for model in (str(tmp_path / "s"), "teacher:base"):  # non-square is a Qwen-Image student's only
        assert _generate(model, tmp_path / "a.png", "--resolution", "32x48") == 2
        _one_error_line(capsys, "--resolution 32x48", "samples squares only")


def test_student_of_another_base_or_broken_weights(student, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    copy = _variant(student, tmp_path, student[1])
    config = json.loads((copy / "transformer" / "config.json").read_text())
    (copy / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": 1}))
    assert _generate(copy, tmp_path / "g.png") == 2
    _one_error_line(capsys, "num_layers = 1", "not distilled from that base")
    (copy / "transformer" / "config.json").write_text(json.dumps(config))
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    save_file({k: v * float("nan") for k, v in load_file(str(weights)).items()}, str(weights))
    assert _generate(copy, tmp_path / "g.png") == 2
    _one_error_line(capsys, "produced NaN/Inf")
    assert not (tmp_path / "g.png").exists()


def test_edit_image_refused_before_the_model_loads(student, tmp_path, capsys, monkeypatch):
    folder, _ = student
    Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "grey16.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    args = ["edit", "--model", str(folder), "--instruction", "x", "--out", str(tmp_path / "e.png"), "--image"]
    assert main(args + [str(tmp_path / "grey16.png")]) == 2
    _one_error_line(capsys, f"--image {tmp_path / 'grey16.png'}", "more than 8 bits per channel")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert main(args + [str(tmp_path / "big.png")]) == 2
    _one_error_line(capsys, f"--image {tmp_path / 'big.png'}", "decompression bomb")
