"""The shipped Qwen-Image recipe on anyone's files, with samples and a judged quick evaluation during training.

A tiny T2I pipeline folder assembled from diffusers' and transformers' own classes and written by
`QwenImagePipeline.save_pretrained` (not by our tiny-folder command), prompts of categories landscape / portrait /
text, `tasks.ratio=1:0`: `flashdistill cache`, `flashdistill distill configs/qwen-image-flash.yaml` unedited (the
guidance rows for text_editing are reported and left out) and `flashdistill generate` succeed; with `eval.every`
and `eval.prompts` the run writes PNG samples under eval/; `run.micro_batch` leaves the first iteration's losses as
they were; with `eval.judge: vlm` against a local fake OpenAI-compatible server the best student is exported to
best/ and `eval.patience` stops the run, and the API key reaches no file.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flashdistill.cli import main

RECIPE = str(Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml")
FAST = ["roles.lora_rank=4", "dmd.batch_size=2", "run.micro_batch=0", "dmd.bf16=false", "run.device=cpu",
        "run.threads=1", "run.log_every=1", "dmd.iterations=2", "run.checkpoint_every=2", "dmd.lr=1e-2"]
PROMPTS = [("a lake at dawn", "landscape"), ("snowy peaks", "landscape"), ("an old man smiling", "portrait"),
           ("a sign that reads OPEN", "text")]
EVAL = [("a red barn", "landscape"), ("a woman with glasses", "portrait"), ("a poster saying SALE", "text")]
pytestmark = pytest.mark.usefixtures("one_thread")


# The VAE of diffusers' own Qwen-Image pipeline tests: 4 latent channels, 2 spatial downsamplings (factor 4, not 8)
DIFFUSERS_TEST_VAE = dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
                          latents_mean=[0.0] * 4, latents_std=[1.0] * 4)


def diffusers_t2i_folder(out: Path, vae: dict | None = None) -> Path:
    """A tiny QwenImagePipeline built from the library classes and saved by diffusers itself, with our tiny VAE or
    `vae` (the transformer packs 4 x its z_dim channels in, z_dim out)."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLForConditionalGeneration

    from flashdistill.models.qwen_tiny import (
        build_tokenizer,
        scheduler_config,
        text_encoder_config,
        transformer_config,
        vae_config,
    )

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    vae = vae or vae_config(0)
    z = vae["z_dim"]
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_config()),
                             vae=AutoencoderKLQwenImage(**vae),
                             text_encoder=Qwen2_5_VLForConditionalGeneration(text_encoder_config(tokenizer)).eval(),
                             tokenizer=tokenizer, transformer=QwenImageTransformer2DModel(
                                 **{**transformer_config(), "in_channels": 4 * z, "out_channels": z}))
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def _jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "category": c}) + "\n" for p, c in rows))
    return path


def _t2i_world(root: Path, vae: dict | None = None) -> tuple[Path, list[str]]:
    """A diffusers-built T2I folder, a random LoRA teacher on it, prompt and eval files, their cache: the --set."""
    from flashdistill.models.qwen_tiny import write_random_lora

    base = diffusers_t2i_folder(root / "base", vae)
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == "QwenImagePipeline"
    lora = write_random_lora(base, root / "specialized.safetensors", rank=4)
    sets = [f"teachers.base={base}", f"teachers.specialized={lora}",
            f"data.prompts={_jsonl(root / 'p.jsonl', PROMPTS)}",
            f"run.text_cache={root / 'cache'}", "data.resolution=64", "tasks.ratio=1:0",
            f"eval.prompts={_jsonl(root / 'eval.jsonl', EVAL)}"]
    assert main(["cache", RECIPE, "--set", *sets, "--vae-area", "4096", "--dtype", "float32"]) == 0
    return root, sets


@pytest.fixture(scope="module")
def t2i(tmp_path_factory):
    return _t2i_world(tmp_path_factory.mktemp("t2i-files"))


def test_shipped_recipe_on_a_t2i_folder_writes_eval_samples_and_generates(t2i, tmp_path, capsys):
    _, sets = t2i
    run = tmp_path / "run"
    assert main(["distill", RECIPE, "--out", str(run), "--set", *sets, *FAST, "eval.every=1"]) == 0
    err = capsys.readouterr().err
    assert "guidance rows for text_editing are not used" in err and err.count("note: guidance rows") == 1
    for step in (1, 2):
        pngs = sorted((run / "eval" / f"step-{step:06d}" / "t2i").glob("*.png"))
        assert len(pngs) == len(EVAL) and (run / "eval" / f"step-{step:06d}" / "grid.png").is_file()
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]
    assert [r["samples"] for r in evals] == [3, 3] and all(r["score"] is None for r in evals) if evals and \
        "score" in evals[0] else len(evals) == 2
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    assert main(["generate", "--model", str(run), "--prompt", "a lake at dusk", "--out", str(tmp_path / "g.png")]) == 0


def test_micro_batch_leaves_the_first_iteration_losses_unchanged(t2i, tmp_path):
    _, sets = t2i
    logs = {}
    for micro in (0, 1):
        run = tmp_path / f"m{micro}"
        assert main(["distill", RECIPE, "--out", str(run), "--set", *sets, *FAST, "dmd.iterations=1",
                     "run.checkpoint_every=1", f"run.micro_batch={micro}"]) == 0
        logs[micro] = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    for key in ("loss", "loss_critic", "grad_norm", "grad_norm_critic"):
        assert logs[1][key] == pytest.approx(logs[0][key], rel=1e-4), key


def test_vlm_judged_eval_keeps_the_best_and_stops_on_patience(t2i, tmp_path, monkeypatch):
    from test_vlm_judge import FakeServer, ok

    _, sets = t2i
    key = "sk-test-never-written-0123456789"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("FAKE_VLM_KEY", key)
    server = FakeServer()
    try:
        for score in (2.0, 4.0, 3.0, 3.0, 3.0, 3.0):  # one evaluation = 3 items
            server.push(*[ok({"score": score, "reasoning": f"echo Bearer {key}"})] * 3)
        run = tmp_path / "run"
        assert main(["distill", RECIPE, "--out", str(run), "--set", *sets, *FAST, "dmd.iterations=6",
                     "eval.every=1", "eval.judge=vlm", f"eval.vlm_base_url={server.url}", "eval.vlm_model=fake",
                     "eval.vlm_api_key_env=FAKE_VLM_KEY", "eval.patience=2", "run.checkpoint_every=1"]) == 0
    finally:
        server.close()
    assert server.auth and all(a == f"Bearer {key}" for a in server.auth)
    evals = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]
    assert [r["score"] for r in evals] == [2.0, 4.0, 3.0, 3.0] and [r["is_best"] for r in evals] == [
        True, True, False, False]
    best = json.loads((run / "best" / "student.json").read_text())
    assert best["iteration"] == 2 and best["score"] == 4.0 and best["family"] == "qwen-image"
    assert (run / "eval" / "step-000002" / "scores.jsonl").is_file()
    for path in run.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path


def test_two_fsdp_ranks_both_sample_and_rank0_writes(t2i, tmp_path):
    """SLOW (~30 s): under run.parallel fsdp the sharded student needs every rank in each sampling forward."""
    import os
    import subprocess
    import sys

    _, sets = t2i
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONFAULTHANDLER": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "flashdistill", "distill", RECIPE, "--out", str(run), "--set", *sets, *FAST, "dmd.iterations=1",
           "run.checkpoint_every=1", "run.parallel=fsdp", "eval.every=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((run / "eval" / "step-000001" / "t2i").glob("*.png"))) == len(EVAL)


def test_diffusers_test_vae_and_a_non_square_size_through_training_eval_and_generate(tmp_path_factory, tmp_path):
    """Defect: the eval drew its noise with 16 channels, square sides and the latent side resolution // 8, so
    `eval.every` crashed on a folder with diffusers' own test VAE (z_dim 4, factor 4) and could not follow a
    non-square `data.resolution`: the latent shape now comes from the folder (channels, VAE factor, both sides)."""
    from PIL import Image

    root, sets = _t2i_world(tmp_path_factory.mktemp("z4-files"), DIFFUSERS_TEST_VAE)
    run = tmp_path / "run"
    assert main(["distill", RECIPE, "--out", str(run), "--set", *sets, *FAST, "data.resolution=[48, 64]",
                 "eval.every=1", "dmd.iterations=1", "run.checkpoint_every=1"]) == 0
    pngs = sorted((run / "eval" / "step-000001" / "t2i").glob("*.png"))
    assert len(pngs) == len(EVAL)
    for png in pngs:
        with Image.open(png) as img:
            assert img.size == (64, 48) and np.asarray(img).std() > 0  # PIL: (width, height)
    assert json.loads((run / "student" / "student.json").read_text())["resolution"] == [48, 64]
    for extra, size in (([], (64, 48)), (["--resolution", "32x80"], (80, 32)), (["--resolution", "32"], (32, 32))):
        out = tmp_path / f"g{len(extra)}{size[0]}.png"
        assert main(["generate", "--model", str(run), "--prompt", "a lake", "--out", str(out), *extra]) == 0
        with Image.open(out) as img:
            assert img.size == size
