"""`flashdistill distill` on tiny Qwen-Image folders: the recipe takes the files' categories; joint T2I + edit DMD in
roles.mode lora reads only the condition cache (no text encoder, no VAE); SIGKILL + --resume reaches the weights
of an uninterrupted run; the export loads into diffusers' pipelines and samples the student's own 4 steps;
the live roles' memory equals the planner's counts."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flashdistill.cli import main
from flashdistill.cli.distill import main_distill
from flashdistill.distill.layouts.build import build_roles
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.models.mmdit import pack, unpack
from flashdistill.models.qwen_tiny import write_tiny_folder
from flashdistill.runtime.dist import Dist

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
FAST = ["roles.lora_rank=4", "dmd.batch_size=4", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
        "run.log_every=1", "dmd.iterations=4", "run.checkpoint_every=1", "dmd.lr=1e-2",
        "dmd.ema_decay=0.5"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(qwen_world):
    """Tiny edit-plus base, a random LoRA teacher on it, prompt and edit files, their condition cache (conftest)."""
    root, sets = qwen_world
    return root, sets + FAST


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
    """An uninterrupted 4-iteration run, with the text encoder and the VAE made unloadable."""
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen2_5_VLForConditionalGeneration

    def refuse(*args, **kwargs):
        raise AssertionError("distill loaded an encoder: training must read only the condition cache")

    _, sets = world
    out = tmp_path_factory.mktemp("straight") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for cls in (Qwen2_5_VLForConditionalGeneration, AutoencoderKLQwenImage):
            mp.setattr(cls, "from_pretrained", classmethod(refuse))
            mp.setattr(cls, "__init__", refuse)
        summary = train_distill(load_recipe(RECIPE, sets), out)
    return out, summary


def test_recipe_takes_the_files_categories(world):
    _, sets = world
    r = load_recipe(RECIPE, sets)
    assert r.categories() == ["landscape", "portrait", "text", "style", "text_editing"]
    assert r.tasks.edit_mix == {"style": 1.0, "text_editing": 1.0}  # default: the edits file's categories
    assert r.timesteps == [1.0, 0.9, 0.75, 0.5] and r.roles.mode == "lora"
    assert r.task_mix().composition == {"landscape": 1, "portrait": 1, "text": 1}
    assert r.data.size() == (64, 64)
    assert load_recipe(RECIPE, sets + ["data.resolution=[48, 64]"]).data.size() == (48, 64)
    for extra, key in (("data.composition={landscape: 1, sky: 1}", "data.composition.sky"),
                       ("guidance.sky={base: 1.0}", "guidance.sky"),
                       ("tasks.edit_mix={object_manipulation: 1}", "tasks.edit_mix.object_manipulation"),
                       ("dmd.first_step_fm=0.5", "dmd.first_step_fm"), ("eval.every=5", "eval.every"),
                       ("data.resolution=[48, 50]", "data.resolution"), ("data.resolution=64x48", "data.resolution"),
                       ("data.resolution=[48, 64, 80]", "data.resolution"), ("data.resolution=[]", "data.resolution")):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            load_recipe(RECIPE, sets + [extra])
    t2i_only = load_recipe(RECIPE, sets + ["data.edits=null", "guidance={default: {base: 1.0}}"])  # cache can run
    with pytest.raises(UserError, match=r"tasks\.ratio: 5:5 asks for edit rows"):  # distill cannot
        build_roles(t2i_only, Dist())
    with pytest.raises(UserError, match="teachers.base: not set"):
        load_recipe(RECIPE)


def test_joint_distill_reads_only_the_cache_and_uses_both_teachers(straight):
    out, summary = straight
    assert summary["iterations"] == 4
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert sum(rec["edit_rows"] for rec in log) > 0 and any(rec["edit_rows"] < 4 for rec in log)  # joint T2I + edit
    assert any("specialized" in rec["teachers_run"] for rec in log)  # text rows at k >= 1 mix in the LoRA teacher
    ckpt = load_file(str(out / "checkpoint" / "student.safetensors"))
    assert ckpt and all("lora_" in k for k in ckpt)  # roles.mode lora: adapters only
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in ckpt.items())  # it trained


def test_sigkill_then_resume_matches_uninterrupted(world, straight, tmp_path):
    _, sets = world
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flashdistill", "distill", str(RECIPE), "--out", str(out), "--set", *sets]
    proc = subprocess.Popen(cmd, env={**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"},
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    assert 1 <= killed_at < 4
    assert main_distill([str(RECIPE), "--out", str(out), "--resume", "--set", *sets]) == 0
    for role in ("student", "ema", "critic"):
        a = load_file(str(straight[0] / "checkpoint" / f"{role}.safetensors"))
        b = load_file(str(out / "checkpoint" / f"{role}.safetensors"))
        assert set(a) == set(b) and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), role


def _flow(transformer):
    from flashdistill.models.mmdit import FlowModel, MMDiTConfig

    return FlowModel(MMDiTConfig.from_transformer(transformer, 8), transformer.eval())


def test_export_loads_into_diffusers_and_samples_the_students_four_steps(world, straight, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
    from diffusers.utils.torch_utils import randn_tensor

    from flashdistill.models.qwen_image import QwenImageParts
    from flashdistill.sampling import few_step_sample

    student = straight[0] / "student"
    t2i = write_tiny_folder(tmp_path / "t2i", "t2i")  # seed 0: the base's transformer, text encoder and VAE
    pipe = QwenImagePipeline.from_pretrained(t2i, scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
        student / "scheduler"))
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(student)  # diffusers' own LoRA loader
    merged = _flow(QwenImageTransformer2DModel.from_pretrained(student / "transformer"))
    family = QwenImageParts(t2i, parts=("text",))
    prompt = "a sign that reads OPEN"
    cond = family.cond([prompt])
    g = torch.Generator().manual_seed(3)
    z, t = torch.randn(1, 16, 8, 8, generator=g), torch.tensor([0.6])
    with torch.no_grad():
        v_lora = _flow(pipe.transformer)(z, t, cond)
        assert torch.allclose(v_lora, merged(z, t, cond), atol=1e-5)  # LoRA file == merged transformer
        roles = build_roles(load_recipe(RECIPE, world[1]), Dist())  # == the checkpoint's EMA adapter
        roles.ema.load_state_dict(load_file(str(straight[0] / "checkpoint" / "ema.safetensors")))
        assert torch.allclose(v_lora, roles.ema(z, t, cond), atol=1e-5)
        assert (v_lora - roles.teachers["base"](z, t, cond)).abs().max() > 1e-3  # the student moved
    # 4 steps through QwenImagePipeline land on flashdistill's few-step sampler at the student's timesteps
    torch.manual_seed(7)  # the scheduler's re-noising draws come from the global generator
    latents = pipe(prompt=prompt, height=64, width=64, num_inference_steps=4, true_cfg_scale=1.0,
                   generator=torch.Generator().manual_seed(0), output_type="latent").images  # (1, 16, 64)
    assert torch.allclose(pipe.scheduler.sigmas[:-1], torch.tensor([1.0, 0.9, 0.75, 0.5]))
    noise = randn_tensor((1, 1, 16, 8, 8), generator=torch.Generator().manual_seed(0))[:, 0]
    torch.manual_seed(7)
    renoise = [unpack(torch.randn(1, 16, 64), 8, 8) for _ in range(3)]
    x0 = few_step_sample(merged, noise, cond, [1.0, 0.9, 0.75, 0.5], renoise=renoise)
    assert torch.allclose(pack(x0), latents, atol=1e-4), (pack(x0) - latents).abs().max()


def test_edit_pipelines_load_the_lora_and_generate_edit_commands(world, straight, tmp_path, capsys):
    from diffusers import QwenImageEditPipeline, QwenImageEditPlusPipeline

    from flashdistill.models.qwen_tiny import load_processor

    root, _ = world
    run = straight[0]
    for kind, cls in (("edit", QwenImageEditPipeline), ("edit-plus", QwenImageEditPlusPipeline)):
        folder = write_tiny_folder(tmp_path / kind, kind)
        pipe = cls.from_pretrained(folder, processor=load_processor(folder))
        pipe.load_lora_weights(run / "student")
        assert pipe.get_list_adapters() == {"transformer": ["default_0"]}
    assert main(["generate", "--model", str(run), "--prompt", "a lake at dawn", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["edit", "--model", str(run), "--image", str(root / "a.png"), "--instruction", "make it winter",
                 "--out", str(tmp_path / "e.png")]) == 0
    for name in ("g.png", "e.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size == (64, 64) and np.asarray(img).std() > 0


def test_live_roles_hold_what_the_planner_counts(world):
    from flashdistill.distill.layouts.memory import materialize_optimizer_states, measure, planned
    from flashdistill.distill.layouts.plan import count, meta_transformer, plan_spec

    config, teachers = plan_spec(str(RECIPE), world[1])
    targets = load_recipe(RECIPE, world[1]).roles.targets()  # the recipe's (with the timestep modulation)
    counts = count(meta_transformer(config), rank=4, targets=targets)
    # the planner counts the specialized teacher's LoRA at the recipe's targets; this one has the default targets
    teacher_lora = count(meta_transformer(config), rank=4).lora_params
    live = {}
    for mode in ("full", "lora"):
        roles = build_roles(load_recipe(RECIPE, world[1] + [f"roles.mode={mode}"]), Dist())
        materialize_optimizer_states(roles)
        live[mode] = measure(roles)
        plan = planned(counts, mode, teachers).elements
        if mode == "lora":
            plan["frozen"] -= counts.lora_params - teacher_lora
        assert teachers == 2 and live[mode].elements == plan, mode
        assert live[mode].elements["optimizer"] == 2 * live[mode].elements["trainable"] > 0
    # full: 2 teachers + student + critic + EMA = 5 copies; lora: one base + the teacher's and 3 rank-4 adapters
    assert live["full"].elements["frozen"] == 2 * counts.params
    assert live["lora"].elements["frozen"] == counts.params + teacher_lora
    assert live["lora"].elements["trainable"] == 2 * counts.lora_params > 2 * teacher_lora  # student + critic
    assert live["lora"].total_bytes < live["full"].total_bytes / 3


def test_bf16_layout_frozen_bf16_trainable_fp32_and_bytes_equal_the_plan(world):
    """roles.frozen_dtype bf16 (the CUDA default): base and teacher adapter bf16, read straight into bf16; student,
    critic and EMA adapters, their AdamW moments fp32; the live bytes equal `flashdistill plan`'s exactly; under
    bf16 autocast the LoRA branches take bf16 activations (peft's fp32 input cast is off)."""
    from flashdistill.distill.layouts.memory import materialize_optimizer_states, measure, planned
    from flashdistill.distill.layouts.plan import count, meta_transformer, plan_spec

    # the default targets, as the specialized teacher's LoRA has (the planner counts it at the recipe's targets)
    sets = world[1] + ["roles.frozen_dtype=bf16", "dmd.bf16=true", "roles.lora_targets=null"]
    config, teachers = plan_spec(str(RECIPE), sets)
    counts = count(meta_transformer(config), rank=4)
    for mode in ("lora", "full"):
        roles = build_roles(load_recipe(RECIPE, sets + [f"roles.mode={mode}"]), Dist())
        materialize_optimizer_states(roles)
        assert measure(roles).bytes == planned(counts, mode, teachers).bytes, mode
        assert {p.dtype for p in roles.student.parameters()} == {torch.float32}
        assert {p.dtype for p in roles.ema.parameters()} == {torch.float32}
        frozen = roles.teachers["base"].base if mode == "lora" else roles.teachers["base"]
        assert {p.dtype for n, p in frozen.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    from flashdistill.conditioning import Cond

    seen = []
    roles = build_roles(load_recipe(RECIPE, sets), Dist())
    layer = roles.student.base.transformer.transformer_blocks[0].attn.to_q.lora_A["student"]
    layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))

    c = Cond(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        v = roles.student(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), c)
    assert seen == [torch.bfloat16] and v.isfinite().all()


def test_non_square_targets_train_evaluate_and_edit(world, tmp_path, monkeypatch, capsys):
    """data.resolution [height, width]: joint T2I + edit training on 48 x 64 targets beside 64 x 64 sources, the
    eval samples of both tasks at that size, and `edit` keeping a non-square source's aspect (the pipeline resizes
    it, not flashdistill)."""
    root, sets = world
    run = tmp_path / "run"
    assert main(["distill", str(RECIPE), "--out", str(run), "--set", *sets, "data.resolution=[48, 64]",
                 "dmd.iterations=1", "eval.every=1", f"eval.prompts={root / 'prompts.jsonl'}",
                 f"eval.edits={root / 'edits.jsonl'}"]) == 0
    step = run / "eval" / "step-000001"
    for task, n, size in (("t2i", 5, (64, 48)), ("edit", 3, (128, 48))):  # an edit tile: source | output
        pngs = sorted((step / task).glob("*.png"))
        assert len(pngs) == n
        with Image.open(pngs[0]) as img:
            assert img.size == size
    wide = tmp_path / "wide.png"
    Image.fromarray((np.random.default_rng(1).random((40, 96, 3)) * 255).astype(np.uint8)).save(wide)
    from diffusers import QwenImageEditPlusPipeline

    seen, call = [], QwenImageEditPlusPipeline.__call__
    monkeypatch.setattr(QwenImageEditPlusPipeline, "__call__",
                        lambda pipe, **kw: seen.append(kw["image"].size) or call(pipe, **kw))
    out = tmp_path / "e.png"
    assert main(["edit", "--model", str(run), "--image", str(wide), "--instruction", "make it winter",
                 "--out", str(out)]) == 0
    assert seen == [(96, 40)]  # the source as it is, not squashed to the student's size
    with Image.open(out) as img:
        assert img.size == (64, 48)
    Image.new("RGB", (4000, 1)).save(tmp_path / "line.png")  # a side of 0 once the pipeline keeps its aspect
    assert main(["edit", "--model", str(run), "--image", str(tmp_path / "line.png"), "--instruction", "x",
                 "--out", str(tmp_path / "f.png")]) == 2
    assert seen == [(96, 40)] and not (tmp_path / "f.png").exists()
    assert f"error: --image {tmp_path / 'line.png'} is 4000x1 px" in capsys.readouterr().err
