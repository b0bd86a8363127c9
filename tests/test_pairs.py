"""DMD's paired regression (distill/pairs.py, pairs_build.py): the teachers' ODE lands on the closed-form map, a
student regressed on pairs learns that map (not the mean first-step flow matching learns), the cache resumes and
extends to the very pairs a straight build writes, refuses another identity and a damaged shard, and the term trains,
logs and resumes exactly."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashdistill.distill import pairs
from flashdistill.distill.guidance import Guidance
from flashdistill.distill.pairs_build import build_pairs
from flashdistill.distill.recipe import load_recipe
from flashdistill.distill.trainer import train_distill
from flashdistill.errors import UserError
from flashdistill.flow import euler_timesteps
from flashdistill.models.text import TextEncoder
from test_distill import GaussianDenoiser, _conds, _weights, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("pairs-text-cache")


def test_guidance_rows_follow_the_student_steps():
    ts = [1.0, 0.75, 0.5, 0.25]
    assert [pairs.guidance_row(ts, t) for t in (1.0, 0.8, 0.75, 0.6, 0.5, 0.3, 0.25, 0.02)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert pairs.guidance_row([1.0], 0.5) == 0


def test_teacher_images_land_on_the_gaussian_map_and_mix_by_step():
    """Data N(μ, s²): the ODE from pure noise z lands on μ + s·z (sd(1) = 1). With a step-wise table the ODE's
    steps above t = 0.5 use row 0 (base only), the others row 1."""
    b, s, mu = 3, 0.5, 1.0
    z = torch.randn((b, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    teachers = {"base": GaussianDenoiser(s), "specialized": GaussianDenoiser(0.8, offset=0.3)}
    cond, uncond = _conds(mu, -1.0, b)
    only_base = Guidance({"landscape": [{"base": 1.0}]}, list(teachers))
    x = pairs.teacher_images(teachers, only_base, [1.0], euler_timesteps(400), z, cond, uncond, 1.0)
    torch.testing.assert_close(x, mu + s * z, rtol=0, atol=1e-2)
    stepwise = Guidance({"landscape": [{"base": 1.0}, {"specialized": 1.0}]}, list(teachers))
    teachers["base"].calls.clear(), teachers["specialized"].calls.clear()
    pairs.teacher_images(teachers, stepwise, [1.0, 0.5], euler_timesteps(4), z, cond, uncond, 1.0)
    assert len(teachers["base"].calls) == 2 and len(teachers["specialized"].calls) == 2  # t = 1, .75 | .5, .25


class LinearStudent(torch.nn.Module):
    """x0 = a·z + b from pure noise (v = z - x0 at t = 1)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(torch.zeros(())), torch.nn.Parameter(torch.zeros(()))

    def forward(self, z_t, t, cond):
        return z_t - (self.a * z_t + self.b)


def test_regression_on_pairs_learns_the_map_not_the_mean():
    """Pairs of the Gaussian teacher's ODE: the paired regression drives x0 = a·z + b to the map (a = s, b = μ);
    the teacher's own one-step x0 from pure noise is the mean (a = 0), the blur first-step flow matching aims at."""
    s, mu, b = 0.5, 1.0, 64
    teacher = {"base": GaussianDenoiser(s)}
    table = Guidance({"landscape": [{"base": 1.0}]}, ["base"])
    student, gen = LinearStudent(), torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    cond, uncond = _conds(mu, -1.0, b)
    for _ in range(100):
        z = torch.randn((b, 1, 2, 2), generator=gen)
        target = pairs.teacher_images(teacher, table, [1.0], euler_timesteps(50), z, cond, uncond, 1.0)
        opt.zero_grad()
        pairs.regression_distance(pairs.student_x0(student, z, 1.0, cond), target, "mse").backward()
        opt.step()
    assert abs(student.a.item() - s) < 0.02 and abs(student.b.item() - mu) < 0.02
    one_step = teacher["base"].x0(z, torch.ones(b), mu)
    torch.testing.assert_close(one_step, torch.full_like(z, mu))  # the teacher's 1-step x0: the mean


def _recipe(teachers, cache_dir, *extra):
    return tiny(teachers, cache_dir, *extra)


def _targets(folder):
    out = {}
    for shard in sorted(folder.glob("pairs-*.safetensors")):
        t = load_file(str(shard))
        for i, x in zip(t["index"].tolist(), t["x"]):
            out[i] = x
    return out


def test_build_resumes_extends_and_refuses_another_identity(teachers, cache_dir, encoder, tmp_path):
    recipe = _recipe(teachers, cache_dir)
    straight = build_pairs(recipe, tmp_path / "straight", 5, nfe=3, batch_size=2, shard_size=2, encoder=encoder,
                           progress=False)
    assert straight == {"pairs": 5, "sampled": 5, "folder": str(tmp_path / "straight")}
    build_pairs(recipe, tmp_path / "grown", 3, nfe=3, batch_size=2, shard_size=2, encoder=encoder, progress=False)
    again = build_pairs(recipe, tmp_path / "grown", 5, nfe=3, batch_size=2, shard_size=2, encoder=encoder,
                        progress=False)
    assert again["sampled"] == 2 and again["pairs"] == 5
    a, b = _targets(tmp_path / "straight"), _targets(tmp_path / "grown")
    assert sorted(a) == sorted(b) == list(range(5))
    for i in a:
        torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)  # batch composition does not change a pair
    cache = pairs.PairsCache(tmp_path / "grown")
    indices, items, x = cache.get([0, 4])
    assert indices == [0, 4] and x.shape == (2, 3, 32, 32) and items[0][0] in ("t2i", "edit")
    with pytest.raises(UserError, match="another cfg_scale"):
        build_pairs(recipe, tmp_path / "grown", 6, nfe=3, cfg_scale=7.0, encoder=encoder, progress=False)
    shard = sorted((tmp_path / "grown").glob("pairs-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(UserError, match="damaged pairs shard"):
        pairs.PairsCache(tmp_path / "grown")


def test_a_recipe_builds_the_cache_its_pairs_section_names(teachers, cache_dir, encoder, tmp_path):
    # configs/flash.yaml names runs/pairs16 and its header's first command builds it: the build must not need it
    named = tmp_path / "named"
    recipe = _recipe(teachers, cache_dir, f"pairs.folder={named}", "pairs.weight=3")
    built = build_pairs(recipe, named, 2, nfe=2, batch_size=2, encoder=encoder, progress=False)
    assert built["pairs"] == 2
    plain = build_pairs(_recipe(teachers, cache_dir), tmp_path / "plain", 2, nfe=2, batch_size=2, encoder=encoder,
                        progress=False)
    assert plain["pairs"] == 2
    index = {f: json.loads((tmp_path / f / "index.json").read_text())["identity"] for f in ("named", "plain")}
    assert index["named"] == index["plain"]  # the pairs section is no input of the pairs


def test_pairs_term_trains_logs_and_resumes_exactly(teachers, cache_dir, encoder, tmp_path):
    build_pairs(_recipe(teachers, cache_dir), tmp_path / "pairs", 6, nfe=2, batch_size=3, encoder=encoder,
                progress=False)
    sets = ("dmd.iterations=3", "run.checkpoint_every=1", f"pairs.folder={tmp_path / 'pairs'}", "pairs.weight=1.0",
            "pairs.final_weight=0.5", "pairs.batch_size=2")
    train_distill(_recipe(teachers, cache_dir, *sets), tmp_path / "straight", encoder=encoder)
    log = [json.loads(line) for line in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss_pairs"] > 0 for r in log)
    train_distill(_recipe(teachers, cache_dir, *sets), tmp_path / "split", encoder=encoder, stop_after=2)
    train_distill(_recipe(teachers, cache_dir, *sets), tmp_path / "split", resume=True, encoder=encoder)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for k in a["student"]:
        torch.testing.assert_close(a["student"][k], b["student"][k], rtol=0, atol=1e-6)
    train_distill(_recipe(teachers, cache_dir, *sets[:2]), tmp_path / "plain", encoder=encoder)
    plain = _weights(tmp_path / "plain")
    assert any(not torch.equal(a["student"][k], plain["student"][k]) for k in plain["student"])
    critic = (*sets[:-1], "pairs.distance=critic")
    train_distill(_recipe(teachers, cache_dir, *critic), tmp_path / "critic", encoder=encoder)
    log = [json.loads(line) for line in (tmp_path / "critic" / "log.jsonl").read_text().splitlines()]
    assert all(0 < r["loss_pairs"] < 4 for r in log)  # unit features: the squared distance lies in [0, 4]
    # pairs of other teachers are refused, naming the teacher whose weights differ
    swapped = _recipe(teachers, cache_dir, *sets, f"teachers.specialized={teachers / 'base'}")
    with pytest.raises(UserError, match=r"teachers\.specialized"):
        train_distill(swapped, tmp_path / "swapped", encoder=encoder)
    # pairs rebuilt since: a resume refuses them (the cache's index is an input of the run)
    build_pairs(_recipe(teachers, cache_dir), tmp_path / "pairs", 8, nfe=2, batch_size=3, encoder=encoder,
                progress=False)
    more = (*sets[:1], "dmd.iterations=4", *sets[1:])
    with pytest.raises(UserError, match="pairs.folder"):
        train_distill(_recipe(teachers, cache_dir, *more), tmp_path / "straight", resume=True, encoder=encoder)


def test_pairs_settings_are_checked(teachers, cache_dir, tmp_path):
    with pytest.raises(UserError, match=r"pairs\.folder"):
        _recipe(teachers, cache_dir, "pairs.weight=1")
    with pytest.raises(UserError, match=r"pairs\.distance"):
        _recipe(teachers, cache_dir, "pairs.distance=lpips")
    recipe = _recipe(teachers, cache_dir, f"pairs.folder={tmp_path / 'none'}", "pairs.weight=1")
    with pytest.raises(UserError, match="no pairs cache here"):
        train_distill(recipe, tmp_path / "run")


def test_pairs_command_line(teachers, cache_dir, tmp_path):
    from test_distill import TINY

    cmd = [sys.executable, "-m", "flashdistill", "pairs", str(TINY), "--n", "2", "--nfe", "2", "--out",
           str(tmp_path / "p"), "--set", f"teachers.base={teachers / 'base'}",
           f"teachers.specialized={teachers / 'spec'}", f"run.text_cache={cache_dir}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 pairs in" in done.stdout and json.loads((tmp_path / "p" / "index.json").read_text())["pairs"] == 2
    bad = subprocess.run(cmd[:4] + ["--n", "0"] + cmd[6:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--n" in bad.stderr


def test_pairs_from_data_files_on_a_qwen_image_folder(qwen_world, tmp_path):
    """At full scale the pairs come from the user's prompt and edit files: `flashdistill pairs` on a (tiny) Qwen-Image
    folder samples along the pipeline's own sigmas (its scheduler's shift at the latent sides), and a LoRA-roles
    run regresses onto them."""
    from flashdistill.cli import main
    from flashdistill.distill.families import family_for

    _, sets = qwen_world
    recipe_file = Path(__file__).resolve().parents[1] / "configs" / "qwen-image-flash.yaml"
    fast = ["roles.lora_rank=4", "dmd.batch_size=2", "dmd.bf16=false", "run.device=cpu", "run.threads=1",
            "dmd.iterations=2", "run.checkpoint_every=2", "roles.frozen_dtype=fp32", "run.micro_batch=0"]
    family = family_for(load_recipe(recipe_file, sets + fast))
    sigmas = family.sampling_sigmas("unused", 4)
    assert len(sigmas) == 5 and float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert main(["pairs", str(recipe_file), "--n", "2", "--nfe", "2", "--out", str(tmp_path / "p"),
                 "--set", *sets, *fast]) == 0
    assert json.loads((tmp_path / "p" / "index.json").read_text())["pairs"] == 2
    run = tmp_path / "run"
    assert main(["distill", str(recipe_file), "--out", str(run), "--set", *sets, *fast,
                 f"pairs.folder={tmp_path / 'p'}", "pairs.weight=1"]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"loss_pairs"' in line]
    assert len(log) == 2 and all(r["loss_pairs"] > 0 for r in log)
