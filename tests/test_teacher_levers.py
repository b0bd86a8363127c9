"""The teacher design levers: 4-px patches, quoted words spelled out to the text encoder, and REPA alignment to the
reader's features (hidden-state capture, target features, exact resume with the REPA head)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel, MMDiTConfig
from flashdistill.models.text import TextEncoder, encoder_for, spell_quoted
from flashdistill.pipeline import FlowPipeline, SamplingSpec
from flashdistill.teacher.config import load_config
from flashdistill.teacher.repa import ReaderFeatures
from flashdistill.teacher.train import train_teacher

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "teacher_tiny.yaml"
LEVERS = ["model.patch_size=4", "model.spell_quoted=true", "repa.weight=0.5", "repa.layer=1", "repa.head_dim=32"]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_spell_quoted_lists_the_letters_of_every_quoted_word():
    assert spell_quoted('a sign that reads "OPEN", in red') == "O P E N"
    assert spell_quoted('change "CAT" to "DOG"') == "C A T , D O G"
    assert spell_quoted("a mountain at night") == ""


def test_spelled_encoder_puts_letters_first_and_is_its_own_cache_key(encoder):
    spelled = encoder.with_spelling(True)
    assert spelled.model is encoder.model and encoder.spell_quoted is False  # a view, not a reload
    assert spelled.id != encoder.id and spelled.with_spelling(False).id == encoder.id
    ids = spelled.tokenizer(*([spell_quoted('reads "OPEN"')], ['reads "OPEN"']))["input_ids"][0]
    assert spelled.tokenizer.convert_ids_to_tokens(ids)[:6] == ["[CLS]", "o", "p", "e", "n", "[SEP]"]
    a, mask_a = spelled.encode(['a sign that reads "OPEN"'])
    b, mask_b = encoder.encode(['a sign that reads "OPEN"'])
    assert int(mask_a.sum()) == int(mask_b.sum()) + 5  # the four letters and a separator
    assert encoder_for(encoder, True).spell_quoted and encoder_for(encoder, False) is encoder


def test_an_encoder_that_cannot_spell_is_refused_for_a_spelling_model():
    class Fake:
        max_length, dim, id = 8, 384, "fake"

    assert isinstance(encoder_for(Fake(), False), Fake)
    with pytest.raises(UserError, match="spell"):
        encoder_for(Fake(), True)


def _inputs(b=4, res=32):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(b, 5, 384, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    source = torch.rand(b, 3, res, res, generator=g) * 2 - 1
    has_source = torch.tensor([True, False, True, False][:b])
    return torch.randn(b, 3, res, res, generator=g), torch.rand(b, generator=g), Cond(text, mask, source, has_source)


@pytest.mark.parametrize("patch", [2, 4])
def test_hidden_capture_leaves_v_unchanged_and_keeps_batch_order(patch):
    torch.manual_seed(0)
    model = FlowModel(MMDiTConfig(**{**MMDiTConfig.tiny().__dict__, "patch_size": patch})).eval()
    z_t, t, cond = _inputs()
    with torch.no_grad():
        v = model(z_t, t, cond)
        v2, hidden = model(z_t, t, cond, hidden_layer=1)
        assert torch.equal(v, v2)
        n = (32 // patch) ** 2
        assert hidden.shape == (4, n, 64)  # target tokens only, source tokens dropped
        for i in range(4):  # each row alone gives the same hidden states as inside the mixed batch
            _, alone = model(z_t[i:i + 1], t[i:i + 1], cond.select(torch.tensor([i])), hidden_layer=1)
            torch.testing.assert_close(alone[0], hidden[i], atol=1e-5, rtol=1e-5)


def test_reader_features_match_the_trunk_stage_of_the_token_grid():
    from flashdistill.models.reader import load_reader

    net = load_reader().net
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # model space
    for grid, dim, stage_end in ((8, 96, 20), (16, 64, 13)):
        feats = ReaderFeatures(grid, net)
        assert feats.dim == dim
        with torch.no_grad():
            want = net.trunk[:stage_end]((x + 1) / 2 - 0.5)  # (B, C, g, g): the map before that stage's max-pool
        torch.testing.assert_close(feats(x), want.flatten(2).transpose(1, 2))
    pooled = ReaderFeatures(4, net)(x)  # coarser than every stage: the 8x8 map average-pooled
    assert pooled.shape == (2, 16, 96)


def test_levers_train_resume_exactly_and_export_without_the_head(tmp_path, encoder, one_thread):
    cache = tmp_path / "cache"
    config = load_config(TINY, [f"run.text_cache={cache}", *LEVERS])
    straight = train_teacher(config, tmp_path / "a", encoder=encoder)
    train_teacher(config, tmp_path / "b", encoder=encoder, stop_after=3)
    train_teacher(config, tmp_path / "b", resume=True, encoder=encoder)
    for name in ("model", "ema", "repa_head"):
        wa = load_file(str(tmp_path / "a" / "checkpoint" / f"{name}.safetensors"))
        wb = load_file(str(tmp_path / "b" / "checkpoint" / f"{name}.safetensors"))
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == pytest.approx(r["loss_fm"] + 0.5 * r["loss_repa"], rel=1e-5) for r in log)
    assert all(-1.0 <= r["loss_repa"] <= 1.0 for r in log)
    teacher = FlowModel.from_pretrained(straight["teacher"])
    assert teacher.config.patch_size == 4 and teacher.config.spell_quoted
    assert not any("repa" in k for k in load_file(str(Path(straight["teacher"]) / "transformer" /
                                                      "diffusion_pytorch_model.safetensors")))
    assert "spell_quoted" in json.loads((tmp_path / "cache" / "index.json").read_text())["encoder_id"]


def test_pipeline_encodes_with_the_models_text_convention(encoder):
    torch.manual_seed(0)
    model = FlowModel(MMDiTConfig(**{**MMDiTConfig.tiny().__dict__, "spell_quoted": True}))
    pipe = FlowPipeline(model, SamplingSpec(nfe=1, cfg_scale=1.0), "spelled", encoder=encoder)
    image = pipe.sample(['a sign that reads "OPEN"'], [None], [0])[0]
    assert pipe._encoder.spell_quoted and image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_repa_layer_must_exist():
    with pytest.raises(UserError, match="repa.layer"):
        load_config(TINY, ["repa.weight=0.5", "repa.layer=3"])  # the tiny model has 2 blocks
