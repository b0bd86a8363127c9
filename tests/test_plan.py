"""Memory planner: parameter counts from the meta device equal the instantiated model's numel; byte arithmetic."""

import pytest
from diffusers import QwenImageTransformer2DModel

from flashdistill.cli import main
from flashdistill.distill.layouts.plan import (
    activation_bytes,
    count,
    meta_transformer,
    role_rows,
    transformer_config_path,
)
from flashdistill.models.lora import add_lora
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.qwen_tiny import write_tiny_folder


def test_counts_equal_the_instantiated_model(tmp_path):
    folder = write_tiny_folder(tmp_path / "t", "t2i")
    c = count(meta_transformer(transformer_config_path(str(folder))), rank=4)
    real = QwenImageTransformer2DModel.from_pretrained(folder / "transformer")
    assert c.params == sum(p.numel() for p in real.parameters())
    assert c.largest_block == max(sum(p.numel() for p in b.parameters()) for b in real.transformer_blocks)
    model = FlowModel(MMDiTConfig.from_transformer(real, 8), real)
    trainable = add_lora(model, rank=4, alpha=None, targets=None, base="x")
    assert c.lora_params == sum(p.numel() for p in trainable)  # what peft actually adds at rank 4


def test_20b_config_and_bytes():
    c = count(meta_transformer(transformer_config_path("qwen-image")), rank=64)
    assert c.params == 20_430_401_088 and c.layers == 60 and c.width == 3072
    world = 8
    full = {r.role: r for r in role_rows(c, "full", world, teachers=2)}
    assert full["student (full)"].total == 16 * c.params / world  # fp32 master + grad + 2 AdamW moments
    assert full["teacher 2 (frozen, bf16)"].total == 2 * c.params / world
    lora = {r.role: r for r in role_rows(c, "lora", world, teachers=2)}
    assert lora["critic adapter"].total == 16 * c.lora_params / world
    assert lora["teacher 2: LoRA on the base (bf16)"].weights == 2 * c.lora_params / world
    mixed = {r.role for r in role_rows(c, "lora, critic.lora false", world, teachers=1)}
    assert "critic (full)" in mixed and "student adapter" in mixed
    s = 4096 + 256
    assert activation_bytes(c, 1, s, False) == 60 * 2 * 17 * 3072 * s
    assert activation_bytes(c, 1, s, True) < activation_bytes(c, 1, s, False) / 10


def test_cli(tmp_path, capsys):
    folder = write_tiny_folder(tmp_path / "t", "t2i")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teachers: {{base: {folder}, spec: teacher:specialized}}\n"
                      "guidance: {default: {base: 1.0}}\n")
    assert main(["plan", str(recipe), "--world-size", "2", "--out", str(tmp_path / "plan.md")]) == 0
    out = capsys.readouterr().out
    assert "## roles.mode: lora, critic.lora false" in out and "teacher 2: LoRA on the base" in out
    assert (tmp_path / "plan.md").read_text() == out
    assert main(["plan", str(tmp_path / "nothing")]) == 2
    assert "no transformer config" in capsys.readouterr().err
    assert main(["plan", "qwen-image", "--world-size", "0"]) == 2


def test_kappa_is_the_least_squares_fit_and_the_h200_runs_are_within_a_gib():
    """The activation factor is fitted on the six measured H200 peaks, and each run's predicted peak is within 2.6 GiB
    (3.4 %) of its measurement (the calibration docs/full-scale.md reports)."""
    from flashdistill.distill.layouts import peak

    c = peak.qwen_counts()
    assert peak.KAPPA == pytest.approx(peak.fit_kappa(c), abs=5e-4)
    rows = peak.calibration(c)
    assert [r["measured_gib"] for r in rows] == [52.57, 64.06, 83.86, 56.78, 63.71, 75.04]
    assert all(abs(r["error_gib"]) <= 2.6 for r in rows), rows


def test_peak_counts_states_grads_and_the_worst_micro_batch():
    from flashdistill.distill.layouts import peak
    from flashdistill.distill.layouts.plan import GIB

    c = count(meta_transformer(transformer_config_path("qwen-image")), rank=64)
    one, two = (peak.predict(c, "lora", 2, peak.Workload(micro_batch=m)) for m in (1, 2))
    # resident: bf16 base and teacher adapter, fp32 student/critic/EMA adapters, fp32 AdamW moments of two adapters
    assert one.states == 2 * (c.params + c.lora_params) + 3 * 4 * c.lora_params + 2 * 8 * c.lora_params
    assert one.grads == 2 * 4 * c.lora_params and one.snapshot == 0
    assert two.activations == pytest.approx(2 * one.activations)  # linear in the micro-batch's tokens
    t2i = peak.Workload(micro_batch=1, edits=False)
    assert t2i.pass_tokens() == 4096 + 256 and peak.Workload(micro_batch=1).pass_tokens() == 2 * 4096 + 512
    assert peak.Workload(micro_batch=1, resolution=(768, 1024), edits=False).pass_tokens() == 48 * 64 + 256
    assert 55 < one.total / GIB < 60 and two.total / GIB < 72  # the recipe's micro-batch 2 fits an 80 GB GPU


def test_plan_cli_prints_the_peak_and_whether_it_fits(capsys):
    assert main(["plan", "qwen-image", "--teachers", "2", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert "## Peak per GPU, roles.mode lora (predicted)" in out and "fits 80 GiB" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ") and "**" in line
            and line.split("|")[1].strip().isdigit()}
    assert rows["2"].rstrip().endswith("yes |") and rows["8"].rstrip().endswith("no |")
    assert main(["plan", "qwen-image", "--micro-batch", "0"]) == 2
    assert main(["plan", "qwen-image", "--gpu-memory", "-1"]) == 2


@pytest.mark.parametrize("change, word", [({"num_layers": 0}, "num_layers"), ({"num_layers": "two"}, "num_layers"),
                                          ({"num_layers": 200_000}, "200000"), ({"attention_head_dim": 0},
                                                                                "attention_head_dim"),
                                          ({"_class_name": "FluxTransformer2DModel"}, "_class_name"),
                                          ({"axes_dims_rope": "x"}, "cannot be built")])
def test_bad_configs_are_one_line(tmp_path, capsys, change, word):
    import json

    config = json.loads(transformer_config_path("qwen-image").read_text())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**config, **change}))
    assert main(["plan", str(path)]) == 2  # 200k layers: refused at once instead of building them for minutes
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and word in err and str(path) in err


def test_config_that_is_not_an_object(tmp_path, capsys):
    (tmp_path / "config.json").write_text("[1, 2]")
    assert main(["plan", str(tmp_path / "config.json")]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


@pytest.mark.parametrize("args, word", [(["--teachers", "1000000000"], "--teachers"),
                                        (["--world-size", "1" + "0" * 30], "--world-size"),
                                        (["--resolution", "17"], "multiple of 16"),
                                        (["--lora-rank", "0"], "--lora-rank"),
                                        (["--text-tokens", "-1"], "--text-tokens"),
                                        (["--set", "dmd.lr=1"], "--set dmd.lr=1")])
def test_bad_plan_values_are_one_line(capsys, args, word):
    assert main(["plan", "qwen-image", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and word in err


def test_largest_bounds_still_plan(capsys):
    assert main(["plan", "qwen-image", "--teachers", "64", "--world-size", str(2**20), "--resolution", "2048"]) == 0
    assert "teacher 64 (frozen, bf16)" in capsys.readouterr().out


def test_fsdp_on_one_rank_and_offload():
    """run.parallel fsdp on one rank adds the gathered blocks; run.fsdp_offload moves states and gradients to the
    host, so the GPU's peak is the gathered blocks and the activations (what a 24-48 GB GPU must hold)."""
    from flashdistill.distill.layouts import peak
    from flashdistill.distill.layouts.plan import GIB

    c = peak.qwen_counts()
    work = peak.Workload(micro_batch=1)
    plain, sharded = peak.predict(c, "lora", 2, work), peak.predict(c, "lora", 2, work, sharded=True)
    assert plain.gather == 0 and sharded.gather == 2 * 2 * c.largest_block
    assert sharded.total == pytest.approx(plain.total + sharded.gather)
    off = peak.predict(c, "lora", 2, work, sharded=True, offload=True)
    assert off.states == off.grads == 0 and off.host == plain.states + plain.grads
    assert off.total == pytest.approx(off.gather + off.activations) and off.total / GIB < 24 < plain.total / GIB


def test_a_recipe_is_planned_at_its_own_lora_rank_and_targets(tmp_path, capsys):
    """A recipe SPEC plans its roles.lora_rank and roles.lora_targets (the timestep modulation here), and the
    count equals what peft adds on those targets; --lora-rank still overrides the recipe's rank."""
    folder = write_tiny_folder(tmp_path / "t", "t2i")
    targets = ["to_q", "to_v", "img_mod.1", "txt_mod.1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"teachers: {{base: {folder}}}\nguidance: {{default: {{base: 1.0}}}}\n"
                      f"roles: {{mode: lora, lora_rank: 4, lora_targets: [{', '.join(targets)}]}}\n")
    real = QwenImageTransformer2DModel.from_pretrained(folder / "transformer")
    peft_count = sum(p.numel() for p in add_lora(FlowModel(MMDiTConfig.from_transformer(real, 8), real), rank=4,
                                                   alpha=None, targets=targets, base="x"))
    assert main(["plan", str(recipe)]) == 0
    assert f"LoRA rank 4 on 4 targets: {peft_count:,} parameters" in capsys.readouterr().out
    assert main(["plan", str(recipe), "--lora-rank", "8"]) == 0
    assert f"LoRA rank 8 on 4 targets: {2 * peft_count:,} parameters" in capsys.readouterr().out
    recipe.write_text(recipe.read_text().replace("lora_targets: [", "lora_targets: [to_q, "))
    assert main(["plan", str(recipe)]) == 2
    assert "roles.lora_targets" in capsys.readouterr().err
