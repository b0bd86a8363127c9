"""Teacher training: deterministic batches, strict config, the flow-matching step, exact (and SIGKILL) resume,
pickle-free checkpoints and the exported teacher. Tiny preset, batch 4, resolution 32, a few steps each."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flashdistill.cli.teacher import main_train
from flashdistill.conditioning import Cond
from flashdistill.data.batches import TaskMix, choose_items, make_batch
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel
from flashdistill.models.text import EmbeddingCache, TextEncoder
from flashdistill.runtime.checkpoint import flatten, unflatten
from flashdistill.teacher import train as train_mod
from flashdistill.teacher.config import config_from_raw, load_config
from flashdistill.teacher.specialize import specialize_teacher
from flashdistill.teacher.train import (
    TrainingDiverged,
    build_state,
    flow_matching_loss,
    prepare_inputs,
    step_generator,
    train_teacher,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "teacher_tiny.yaml"


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("text-cache")


def tiny(cache_dir, *overrides):
    return load_config(TINY, [f"run.text_cache={cache_dir}", *overrides])


@pytest.fixture(scope="module")
def straight(tmp_path_factory, encoder, cache_dir):
    """An uninterrupted 6-step tiny run, shared by the resume, export and checkpoint tests."""
    out = tmp_path_factory.mktemp("straight")
    summary = train_teacher(tiny(cache_dir), out, encoder=encoder, command="pytest")
    return out, summary


def _assert_same_weights(a: Path, b: Path, atol=1e-6):
    for name in ("model.safetensors", "ema.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=f"{name}:{k}")


# ---- batches ----------------------------------------------------------------------------------------------
def test_make_batch_is_deterministic_and_well_formed():
    mix = TaskMix()
    a, b, c = make_batch(5, 4, mix, seed=1), make_batch(5, 4, mix, seed=1), make_batch(6, 4, mix, seed=1)
    assert torch.equal(a.x, b.x) and torch.equal(a.source, b.source) and a.texts == b.texts
    assert a.texts != c.texts
    assert a.x.shape == a.source.shape == (4, 3, 32, 32) and a.x.min() >= -1 and a.x.max() <= 1
    assert a.has_source.tolist() == [t == "edit" for t in a.task]
    assert (a.source[~a.has_source] == 0).all()
    assert [(t, c, i) for t, c, i in zip(a.task, a.category, a.index)] == choose_items(5, 4, mix, 1)


def test_mix_is_followed_statistically():
    mix = TaskMix(t2i_weight=7, edit_weight=3, composition={"text": 1.0},
                  edit_mix={"text_editing": 3.0, "style_transfer": 1.0})
    rows = [r for step in range(400) for r in choose_items(step, 8, mix, seed=0)]
    tasks = Counter(task for task, _, _ in rows)
    assert abs(tasks["edit"] / len(rows) - 0.3) < 0.05
    assert {cat for task, cat, _ in rows if task == "t2i"} == {"text"}
    edits = Counter(cat for task, cat, _ in rows if task == "edit")
    assert set(edits) == {"text_editing", "style_transfer"}
    assert abs(edits["text_editing"] / sum(edits.values()) - 0.75) < 0.06
    assert all(0 <= i < 20_000 for task, _, i in rows if task == "t2i")


@pytest.mark.parametrize("mix, key", [
    (TaskMix(t2i_weight=-1), "mix.t2i_weight"),
    (TaskMix(composition={"text": -0.5}), "mix.composition.text"),
    (TaskMix(edit_mix={"teleport": 1}), "mix.edit_mix.teleport"),
    (TaskMix(t2i_weight=0, edit_weight=0), "mix.t2i_weight"),
    (TaskMix(composition={"text": 0}), "mix.composition"),
    # finite weights whose sum overflows: every share would be 0/inf (a ValueError deep in numpy, or all T2I rows)
    (TaskMix(composition={"text": 1e308, "landscape": 1e308}), "mix.composition"),
    (TaskMix(edit_mix={"style_transfer": 1e308, "text_editing": 1e308}), "mix.edit_mix"),
    (TaskMix(t2i_weight=1e308, edit_weight=1e308), "mix.t2i_weight, mix.edit_weight"),
])
def test_mix_validation_names_the_key(mix, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        mix.validate()


# ---- config -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["train.lr=-0.1"], r"train\.lr: must be > 0"),
    (["train.lrr=0.1"], r"train\.lrr: unknown key"),
    (["train.steps=ten"], r"train\.steps: must be an integer"),
    (["train.steps=2.5"], r"train\.steps: must be an integer"),
    (["train.bf16=1"], r"train\.bf16: must be true or false"),
    (["train.ema_decay=1"], r"train\.ema_decay: must be in"),
    (["model.preset=huge"], r"model\.preset"),
    (["model.resolution=40"], r"model\.resolution"),
    (["mix.composition.sky=1"], r"mix\.composition\.sky: unknown category"),
    (["timesteps.shift=0"], r"timesteps\.shift: must be > 0"),
    (["train.lr.x=1"], r"train\.lr is a value"),
    (["nonsense"], r"expected key\.sub=value"),
    (["extra.key=1"], r"extra: unknown key"),
])
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(TINY, overrides)


def test_shipped_configs_load_and_overrides_apply():
    for name in ("teacher_tiny", "teacher_base", "teacher_specialized"):
        load_config(ROOT / "configs" / f"{name}.yaml")
    cfg = load_config(TINY, ["train.lr=2e-4", "train.bf16=true", "mix.composition.text=3", "model.num_layers=1"])
    assert cfg.train.lr == 2e-4 and cfg.train.bf16 is True and cfg.mix.composition["text"] == 3.0
    assert cfg.model.mmdit().num_layers == 1
    assert config_from_raw({}).model.preset == "small"  # every group is optional


# ---- the training step ------------------------------------------------------------------------------------
def test_loss_is_finite_and_overfits_one_batch(encoder, cache_dir):
    cfg = tiny(cache_dir, "train.text_dropout=0", "train.source_dropout=0")
    state = build_state(cfg)
    cache = EmbeddingCache(cache_dir, encoder)
    opt = torch.optim.Adam(state.model.parameters(), lr=2e-3)
    batch = make_batch(0, 4, cfg.mix, seed=0)
    losses = []
    for _ in range(25):
        x, eps, t, cond = prepare_inputs(batch, cache, cfg.train, cfg.timesteps, step_generator(0, 0))  # same draws
        loss = flow_matching_loss(state.model, x, eps, t, cond)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_dropout_draws_are_reproducible_and_drop_sources(encoder, cache_dir):
    cfg = tiny(cache_dir, "train.text_dropout=0.5", "train.source_dropout=1")
    cache = EmbeddingCache(cache_dir, encoder)
    batch = make_batch(3, 4, cfg.mix, seed=0)
    a = prepare_inputs(batch, cache, cfg.train, cfg.timesteps, step_generator(0, 3))
    b = prepare_inputs(batch, cache, cfg.train, cfg.timesteps, step_generator(0, 3))
    for u, v in zip(a[:3], b[:3]):
        assert torch.equal(u, v)
    assert not a[3].has_source.any() and (a[3].source == 0).all()  # every source dropped: all rows train as T2I


def test_non_finite_loss_stops_training(encoder, cache_dir, monkeypatch):
    cfg = tiny(cache_dir)
    monkeypatch.setattr(train_mod, "flow_matching_loss", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(TrainingDiverged, match="step 0"):
        train_mod.train_step(build_state(cfg), cfg, EmbeddingCache(cache_dir, encoder), 0)


def test_non_finite_gradient_stops_before_the_update(encoder, cache_dir, monkeypatch):
    """A finite loss with a NaN gradient must not reach AdamW, the scheduler or the EMA."""
    cfg = tiny(cache_dir)
    state = build_state(cfg)
    real = train_mod.flow_matching_loss

    def nan_gradient(model, *args, **kwargs):  # d sqrt(u)/du at u = 0 is inf, times 0: NaN, while the loss is finite
        return real(model, *args, **kwargs) + torch.sqrt(0 * next(model.parameters()).sum())

    monkeypatch.setattr(train_mod, "flow_matching_loss", nan_gradient)
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="gradient norm is nan at step 0"):
        train_mod.train_step(state, cfg, EmbeddingCache(cache_dir, encoder), 0)
    assert all(torch.equal(v, before[k]) for k, v in state.model.state_dict().items())
    assert all(torch.equal(v, before[k]) for k, v in state.ema.state_dict().items())
    assert not state.optimizer.state and state.scheduler.last_epoch == 0


def test_divergence_keeps_the_good_checkpoint_and_resume_takes_a_lower_lr(tmp_path, encoder, cache_dir, capsys):
    """Defect: a diverged run left ruined weights in its checkpoint and --resume refused the lower lr it advised."""
    out = tmp_path / "run"
    train_teacher(tiny(cache_dir, "run.checkpoint_every=1"), out, encoder=encoder, stop_after=3)
    good = load_file(str(out / "checkpoint" / "model.safetensors"))
    with pytest.raises(TrainingDiverged, match="continues from the checkpoint at step 3"):
        train_teacher(tiny(cache_dir, "run.checkpoint_every=1", "train.lr=1e30"), out, resume=True, encoder=encoder)
    assert "train.lr 0.001 -> 1e+30" in capsys.readouterr().err
    ruined = load_file(str(out / "checkpoint.diverged" / "model.safetensors"))  # step 4: one huge, finite step
    assert max(float(t.abs().max()) for t in ruined.values()) > 1e20
    assert main_train([str(TINY), "--out", str(out), "--resume", "--set", "run.checkpoint_every=1", "train.lr=5e-4",
                       f"run.text_cache={cache_dir}"]) == 0
    assert "train.lr 0.001 -> 0.0005" in capsys.readouterr().err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and state["meta"]["config"]["train"]["lr"] == 5e-4
    final = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(t).all() and t.abs().max() < 1e3 for t in final.values())
    assert any(not torch.equal(final[k], good[k]) for k in good)  # it trained on from the good weights


def test_resume_falls_back_to_the_previous_checkpoint_and_drops_a_torn_log_line(tmp_path, encoder, cache_dir,
                                                                                 capsys):
    """Defects: a truncated checkpoint ended --resume with a traceback although the previous one was on disk, and
    a torn last line in log.jsonl stopped --resume."""
    overrides = ["run.checkpoint_every=2"]
    ref = tmp_path / "ref"
    train_teacher(tiny(cache_dir, *overrides), ref, encoder=encoder)
    out = tmp_path / "run"
    train_teacher(tiny(cache_dir, *overrides), out, encoder=encoder, stop_after=4)
    weights = out / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with (out / "log.jsonl").open("a") as log:
        log.write('{"step": 5, "loss": 0.1')  # torn by a kill
    resumed = train_teacher(tiny(cache_dir, *overrides), out, resume=True, encoder=encoder)
    assert resumed["resumed_from"] == 2 and "used the previous one" in capsys.readouterr().err
    _assert_same_weights(ref / "checkpoint", out / "checkpoint")
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == list(range(1, 7))
    for name in ("checkpoint", "checkpoint.prev"):  # both damaged: one line naming them, no traceback
        path = out / name / "ema.safetensors"
        path.write_bytes(b"garbage" * 10)
    assert main_train([str(TINY), "--out", str(out), "--resume", "--set", *overrides, "train.steps=8",
                       f"run.text_cache={cache_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "no checkpoint reads back" in err and "checkpoint.prev" in err


def test_a_kill_during_export_leaves_no_stale_folder_and_keeps_the_final_loss(tmp_path, encoder, cache_dir,
                                                                              monkeypatch):
    """Defect: `.teacher-tmp-*` stayed forever and the resumed teacher.json had final_loss null."""
    out = tmp_path / "run"

    def killed(ema, out, info):
        (out / ".teacher-tmp-dead").mkdir()
        (out / ".teacher-tmp-dead" / "teacher.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "export_teacher", killed)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(tiny(cache_dir), out, encoder=encoder)
    monkeypatch.undo()
    summary = train_teacher(tiny(cache_dir), out, resume=True, encoder=encoder)
    assert not list(out.glob(".*-tmp-*"))
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])["loss"]
    info = json.loads((out / "teacher" / "teacher.json").read_text())
    assert summary["final_loss"] == info["final_loss"] == last


# ---- checkpoints and resume -------------------------------------------------------------------------------
def test_flatten_round_trips_optimizer_state(straight):
    state = build_state(load_config(TINY))
    state.model(torch.zeros(1, 3, 32, 32), torch.ones(1), Cond(torch.zeros(1, 2, 384), torch.ones(1, 2).bool())) \
        .sum().backward()
    state.optimizer.step()
    sd = state.optimizer.state_dict()
    tensors = {}
    back = unflatten(json.loads(json.dumps(flatten(sd, tensors))), tensors)
    assert back["param_groups"][0]["betas"] == sd["param_groups"][0]["betas"]
    assert isinstance(back["param_groups"][0]["betas"], tuple) and set(back["state"]) == set(sd["state"])
    assert torch.equal(back["state"][0]["exp_avg"], sd["state"][0]["exp_avg"])


def test_exact_resume_matches_straight_run(straight, tmp_path, encoder, cache_dir):
    out_a, summary = straight
    assert summary["steps"] == 6 and summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    out_b = tmp_path / "b"
    part = train_teacher(tiny(cache_dir), out_b, encoder=encoder, stop_after=3)  # as if interrupted at step 3
    assert part["teacher"] is None and not (out_b / "teacher").exists()
    with pytest.raises(UserError, match="--resume"):
        train_teacher(tiny(cache_dir), out_b, encoder=encoder)  # never silently overwrite a run
    with pytest.raises(UserError, match=r"train\.batch_size"):  # changes what the run is: refused
        train_teacher(tiny(cache_dir, "train.batch_size=8"), out_b, resume=True, encoder=encoder)
    resumed = train_teacher(tiny(cache_dir), out_b, resume=True, encoder=encoder)  # fresh objects, from disk
    assert resumed["resumed_from"] == 3
    _assert_same_weights(out_a / "checkpoint", out_b / "checkpoint")
    steps = [json.loads(line)["step"] for line in (out_b / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, encoder, cache_dir):
    overrides = ["train.steps=8", "run.checkpoint_every=1"]
    ref = tmp_path / "ref"
    train_teacher(tiny(cache_dir, *overrides), ref, encoder=encoder)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "flashdistill", "teacher", "train", str(TINY), "--out", str(out), "--set", *overrides,
           f"run.text_cache={cache_dir}"]
    proc = subprocess.Popen(cmd, env={**os.environ, "TQDM_DISABLE": "1"}, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "checkpoint" / "state.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((out / "checkpoint" / "state.json").read_text())["step"]
    assert 1 <= killed_at < 8
    assert main_train([str(TINY), "--out", str(out), "--resume", "--set", *overrides,
                       f"run.text_cache={cache_dir}"]) == 0
    _assert_same_weights(ref / "checkpoint", out / "checkpoint")


def test_checkpoint_holds_no_pickle(straight):
    out, _ = straight
    files = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert files == ["ema.safetensors", "model.safetensors", "state.json", "state.safetensors"]
    for path in (out / "checkpoint").iterdir():
        head = path.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # neither a raw pickle nor torch.save's zip
        if path.suffix == ".safetensors":
            load_file(str(path))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 6 and "fingerprint" in state["meta"]
    assert not list(out.glob(".checkpoint-tmp-*")) and not (out / "checkpoint.old").exists()


def test_exported_teacher_loads_and_is_the_ema(straight, encoder):
    out, _ = straight
    teacher = FlowModel.from_pretrained(out / "teacher").eval()
    info = json.loads((out / "teacher" / "teacher.json").read_text())
    assert info["steps"] == 6 and info["weights"] == "EMA" and info["command"] == "pytest"
    assert info["config"]["model"]["preset"] == "tiny" and info["hardware"]["cpus"] >= 1
    ema = load_file(str(out / "checkpoint" / "ema.safetensors"))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, ema[k])
    text, mask = encoder.encode(["a red hat", ""])
    with torch.no_grad():
        v = teacher(torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9]), Cond(text, mask))
    assert v.shape == (2, 3, 32, 32) and torch.isfinite(v).all()


def test_specialize_starts_from_the_base_teacher(straight, tmp_path, cache_dir):
    out, _ = straight
    with pytest.raises(UserError, match=r"run\.init_from"):
        specialize_teacher(tiny(cache_dir), tmp_path / "spec")
    state = build_state(tiny(cache_dir, f"run.init_from={out / 'teacher'}"))
    base = FlowModel.from_pretrained(out / "teacher")
    for (k, v), v_ema in zip(base.state_dict().items(), state.ema.state_dict().values()):
        assert torch.equal(v, state.model.state_dict()[k]) and torch.equal(v, v_ema)
    with pytest.raises(UserError, match=r"run\.init_from"):
        build_state(tiny(cache_dir, f"run.init_from={out / 'teacher'}", "model.num_layers=1"))


def test_main_train_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main_train([str(TINY), "--out", str(tmp_path / "x"), "--set", "train.lr=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr" in err


# ---- LoRA fine-tuning (the specialized teacher as a peft adapter on the base) ------------------------------
def test_lora_specialize_trains_only_the_adapter_resumes_exactly_and_exports_small(straight, tmp_path, encoder,
                                                                                   cache_dir):
    base_dir = straight[0] / "teacher"
    lora = [f"run.init_from={base_dir}", "lora.rank=4", "train.lr=1e-2"]
    ref = tmp_path / "ref"
    train_teacher(tiny(cache_dir, *lora), ref, encoder=encoder)
    out = tmp_path / "resumed"
    train_teacher(tiny(cache_dir, *lora), out, encoder=encoder, stop_after=3)
    train_teacher(tiny(cache_dir, *lora), out, resume=True, encoder=encoder)
    _assert_same_weights(ref / "checkpoint", out / "checkpoint")

    base = FlowModel.from_pretrained(base_dir)
    trained = load_file(str(ref / "checkpoint" / "model.safetensors"))
    for k, v in base.state_dict().items():  # the base weights never move; only lora_A / lora_B do
        key = k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(v, trained.get(k, trained.get(key)))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in trained.items())

    exported = ref / "teacher"
    meta = json.loads((exported / "flashdistill_model.json").read_text())
    assert meta["model"] == "mmdit-lora" and meta["lora"]["rank"] == 4
    adapter_bytes = sum(p.stat().st_size for p in exported.rglob("*.safetensors"))
    base_bytes = sum(p.stat().st_size for p in base_dir.rglob("*.safetensors"))
    assert adapter_bytes < base_bytes / 3

    fused = FlowModel.from_pretrained(exported).eval()  # base + adapter, fused: a plain model
    assert fused.lora is None and not any("lora" in k for k in fused.state_dict())
    state = build_state(tiny(cache_dir, *lora))
    from flashdistill.runtime.checkpoint import load_checkpoint
    load_checkpoint(ref / "checkpoint", state.model, state.ema, state.optimizer, state.scheduler)
    text, mask = encoder.encode(["a red hat", ""])
    z, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        torch.testing.assert_close(fused(z, t, Cond(text, mask)), state.ema(z, t, Cond(text, mask)), atol=1e-5,
                                   rtol=1e-5)


def test_lora_needs_a_base(cache_dir):
    with pytest.raises(UserError, match=r"lora\.rank"):
        tiny(cache_dir, "lora.rank=4")


def test_ship_a_lora_teacher_stores_the_adapter_on_the_shipped_base(straight, tmp_path, encoder, cache_dir):
    from flashdistill.teacher.ship import ship

    base_run = straight[0] / "teacher"
    run = tmp_path / "spec"
    train_teacher(tiny(cache_dir, f"run.init_from={base_run}", "lora.rank=4", "train.steps=2"), run, encoder=encoder)
    root = tmp_path / "assets"
    ship(base_run, "base", 3.0, dest_root=root)
    dest = ship(run / "teacher", "specialized", 3.0, dest_root=root, base=str(root / "base"))
    meta = json.loads((dest / "flashdistill_model.json").read_text())
    assert meta["lora"]["base"] == str(root / "base") and meta["lora"]["trained_on"] == str(base_run)
    weights = load_file(str(dest / "transformer" / "pytorch_lora_weights.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())
    card = (dest / "MODEL_CARD.md").read_text()
    assert "LoRA adapter" in card and "rank 4" in card
    shipped = FlowModel.from_pretrained(dest)
    original = FlowModel.from_pretrained(run / "teacher")
    for a, b in zip(shipped.parameters(), original.parameters()):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # float16 storage of base and adapter
