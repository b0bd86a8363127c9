"""Sampling and inference: CFG, seeds, the few-step sampler, and the generate / edit / bench commands on a model."""

import json

import numpy as np
import pytest
import torch

from flashdistill.cli import main
from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.flow import interpolate, x0_from_v
from flashdistill.imageio import load_png, save_png
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.shipped import TEACHERS_DIR
from flashdistill.pipeline import FlowPipeline, SamplingSpec, load_teacher
from flashdistill.sampling import euler_sample, few_step_sample, guided_velocity


class Affine(torch.nn.Module):
    """v = a·z_t + b·text_mean (per row): conditional and unconditional velocities known in closed form."""

    def forward(self, z_t, t, cond):
        text = (cond.text * cond.text_mask[..., None]).sum((1, 2))  # (B,)
        return 0.5 * z_t + text[:, None, None, None]


def _cond(values):
    text = torch.tensor(values, dtype=torch.float32)[:, None, None]  # (B, 1, 1)
    return Cond(text, torch.ones(len(values), 1, dtype=torch.bool))


def test_cfg_is_the_guided_combination_in_one_doubled_batch():
    z = torch.randn(2, 3, 4, 4)
    t = torch.tensor([0.7, 0.7])
    cond, uncond = _cond([1.0, -2.0]), _cond([0.0, 0.0])
    v = guided_velocity(Affine(), z, t, cond, uncond, cfg_scale=3.0)
    v_u, v_c = 0.5 * z, 0.5 * z + torch.tensor([1.0, -2.0])[:, None, None, None]
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u))
    torch.testing.assert_close(guided_velocity(Affine(), z, t, cond, uncond, 1.0), v_c)


def test_few_step_sampler_with_exact_x0_returns_it():
    """A model that predicts the true x0 at every step makes the sampler return x0, whatever the re-noising."""
    x = torch.randn(3, 3, 4, 4)

    class Exact(torch.nn.Module):
        def forward(self, z_t, t, cond):
            return (z_t - x) / t[:, None, None, None]  # v with x0_from_v(z_t, t, v) = x

    renoise = [torch.randn_like(x) for _ in range(3)]
    out = few_step_sample(Exact(), torch.randn_like(x), _cond([0.0] * 3), [1.0, 0.75, 0.5, 0.25], renoise=renoise)
    torch.testing.assert_close(out, x)
    z = interpolate(x, renoise[0], 0.75)
    torch.testing.assert_close(x0_from_v(z, 0.75, Exact()(z, torch.full((3,), 0.75), None)), x)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-teacher")
    FlowModel(MMDiTConfig.tiny()).save_pretrained(folder)
    (folder / "teacher.json").write_text(json.dumps({"sampling": {"shift": 1.0, "cfg_scale": 2.5}}))
    return folder


def test_images_depend_on_the_seed_only_not_the_batch(model_dir):
    pipe = load_teacher(str(model_dir), batch_size=2)
    assert pipe.spec.cfg_scale == 2.5 and pipe.default_nfe == 50
    texts = ["a red sign that says CAT", "a portrait", "a red sign that says CAT"]
    together = pipe.sample(texts, [None] * 3, [7, 8, 7], nfe=3)
    alone = pipe.sample(texts[:1], [None], [7], nfe=3)
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(together[0], together[2], atol=1e-5)
    assert np.abs(together[0] - together[1]).max() > 1e-3
    assert together[0].shape == (32, 32, 3) and together[0].min() >= 0 and together[0].max() <= 1


def test_student_spec_uses_its_timesteps_and_refuses_other_nfe(model_dir):
    from flashdistill.errors import UserError

    pipe = FlowPipeline(FlowModel.from_pretrained(model_dir), SamplingSpec(timesteps=(1.0, 0.75, 0.5, 0.25)), "s")
    assert pipe.default_nfe == 4 and pipe.spec.passes() == 4
    a = pipe.sample(["x"], [None], [1])
    b = pipe.sample(["x", "y"], [None, None], [1, 2])
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    with pytest.raises(UserError, match="4-step student"):
        pipe.sample(["x"], [None], [1], nfe=50)


def test_euler_with_cfg_counts_two_passes_per_step():
    assert SamplingSpec(nfe=50, cfg_scale=4.0).passes() == 100
    assert SamplingSpec(nfe=50, cfg_scale=1.0).passes() == 50
    calls = []

    class Count(torch.nn.Module):
        def forward(self, z_t, t, cond):
            calls.append(len(z_t))
            return torch.zeros_like(z_t)

    euler_sample(Count(), torch.randn(2, 3, 4, 4), _cond([1.0, 1.0]), _cond([0.0, 0.0]), nfe=5, cfg_scale=4.0)
    assert calls == [4] * 5  # one doubled batch per step


def test_generate_and_edit_commands(model_dir, tmp_path, capsys):
    out = tmp_path / "gen.png"
    args = ["--model", str(model_dir), "--nfe", "2", "--seed", "3"]
    assert main(["generate", "--prompt", "a mountain at night", *args, "--out", str(out)]) == 0
    first = load_png(out)
    assert main(["generate", "--prompt", "a mountain at night", *args, "--out", str(out)]) == 0
    np.testing.assert_array_equal(first, load_png(out))  # same seed, same image
    src = tmp_path / "src.png"
    save_png(src, np.full((48, 48, 3), 0.5, np.float32))  # another size: resized to the model's 32 px
    edited = tmp_path / "edit.png"
    assert main(["edit", "--image", str(src), "--instruction", "make it night", *args, "--n", "2",
                 "--out", str(edited)]) == 0
    assert (tmp_path / "edit-seed3.png").is_file() and (tmp_path / "edit-seed4.png").is_file()
    assert main(["generate", "--prompt", "x", "--model", "oracle", "--out", str(out)]) == 2
    assert main(["edit", "--image", str(tmp_path / "missing.png"), "--instruction", "x", *args,
                 "--out", str(edited)]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_bench_runs_a_model_folder_and_records_its_nfe(model_dir, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "edit", "--model", str(model_dir), "--nfe", "2", "--limit", "1", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["nfe"] == 2 and results["n_cases"] == 6
    assert 1.0 <= results["average"] <= 5.0


def test_ship_stores_float16_with_card_and_loads_as_float32(model_dir, tmp_path):
    import shutil

    from flashdistill.teacher.ship import ship

    run = shutil.copytree(model_dir, tmp_path / "run")
    info = {"config": {"train": {"seed": 0, "batch_size": 4}, "model": {"preset": "tiny", "resolution": 32}},
            "steps": 3, "command": "flashdistill teacher train configs/teacher_tiny.yaml", "wall_time_s": 6.0,
            "sampling": {"shift": 1.0}, "final_loss": 0.5, "hardware": {"cpus": 2}}
    (run / "teacher.json").write_text(json.dumps(info))
    dest = ship(run, "base", cfg_scale=3.0, dest_root=tmp_path / "assets")
    card = (dest / "MODEL_CARD.md").read_text()
    assert "flashdistill teacher train configs/teacher_tiny.yaml" in card and "parameters" in card
    pipe = load_teacher(str(dest))
    assert pipe.spec.cfg_scale == 3.0 and next(pipe.model.parameters()).dtype == torch.float32
    original = FlowModel.from_pretrained(model_dir)
    for a, b in zip(original.parameters(), pipe.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # float16 storage


@pytest.mark.parametrize("name", ["base", "specialized"])
def test_shipped_teachers_load_offline_and_sample(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_teacher(f"teacher:{name}", batch_size=2)
    card = TEACHERS_DIR / name / "MODEL_CARD.md"
    assert card.is_file() and "command" in card.read_text()
    assert pipe.model.num_params() > 1_000_000
    img = pipe.sample(["a blue sign that says MOON"], [None], [0], nfe=2)[0]
    assert img.shape == (32, 32, 3) and np.isfinite(img).all()


# ---- faults: broken weights and values that cannot be meant -----------------------------------------------
@pytest.fixture(scope="module")
def nan_dir(model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("nan-teacher")
    model = FlowModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.transformer.proj_out.bias.fill_(float("nan"))
    model.save_pretrained(folder)
    return folder


def test_a_nan_model_is_an_error_naming_it_not_black_images(nan_dir, tmp_path, capsys):
    """Defect: a NaN student wrote all-black PNGs with exit 0, and `bench` scored them."""
    with pytest.raises(UserError, match=rf"model {nan_dir} produced NaN/Inf for 2 of 2 images"):
        load_teacher(str(nan_dir)).sample(["a", "b"], [None, None], [0, 1], nfe=2)
    out = tmp_path / "x.png"
    assert main(["generate", "--prompt", "x", "--model", str(nan_dir), "--nfe", "1", "--out", str(out)]) == 2
    bench = tmp_path / "bench"
    assert main(["bench", "t2i", "--model", str(nan_dir), "--nfe", "1", "--limit", "1", "--out", str(bench)]) == 2
    assert not out.exists() and not list(bench.glob("images/*.png")) and not (bench / "results.json").exists()
    assert capsys.readouterr().err.count("NaN/Inf") == 2


def test_nfe_zero_is_refused_not_run_at_the_default(model_dir, tmp_path, capsys):
    """Defect: --nfe 0 silently ran 50 steps and recorded nfe: 0; --n 0 wrote nothing with exit 0."""
    pipe = load_teacher(str(model_dir))
    with pytest.raises(UserError, match="--nfe must be at least 1, got 0"):
        pipe.sample(["a"], [None], [0], nfe=0)
    student = FlowPipeline(pipe.model, SamplingSpec(timesteps=(1.0, 0.5)), "student")
    with pytest.raises(UserError, match="--nfe must be at least 1"):
        student.sample(["a"], [None], [0], nfe=0)
    for cmd, flag in ((["generate", "--prompt", "x"], "--nfe"), (["generate", "--prompt", "x"], "--n"),
                      (["bench", "t2i", "--limit", "1"], "--batch-size"), (["bench", "t2i"], "--nfe")):
        with pytest.raises(SystemExit) as exit_:  # argparse: before any model is loaded
            main([*cmd, "--model", str(model_dir), flag, "0", "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(errors) == 4 and all(line.startswith("error: ") and "must be at least 1, got 0" in line
                                    for line in errors)
    assert not (tmp_path / "o").exists()
