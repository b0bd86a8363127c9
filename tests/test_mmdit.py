"""The MMDiT adapter `v = model(z_t, t, cond)` on a tiny random QwenImageTransformer2DModel."""

import pytest
import torch
from diffusers import QwenImageTransformer2DModel

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.models.mmdit import FlowModel, MMDiTConfig, pack, unpack

B, L, D = 4, 7, 384


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FlowModel(MMDiTConfig.tiny()).eval()


def _inputs(seed=0, b=B, res=32):
    g = torch.Generator().manual_seed(seed)
    z_t = torch.randn(b, 3, res, res, generator=g)
    t = torch.rand(b, generator=g)
    text = torch.randn(b, L, D, generator=g)
    lengths = torch.tensor([7, 3, 5, 2][:b])
    mask = torch.arange(L)[None] < lengths[:, None]  # (B, L)
    source = torch.rand(b, 3, res, res, generator=g) * 2 - 1
    return z_t, t, text * mask[..., None], mask, source


def test_pack_matches_diffusers_pipelines():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline

    x = torch.randn(2, 3, 8, 12)
    tokens = pack(x)
    assert tokens.shape == (2, 24, 12)
    assert torch.equal(tokens, QwenImagePipeline._pack_latents(x, 2, 3, 8, 12))
    assert torch.equal(unpack(tokens, 8, 12), x)
    theirs = QwenImagePipeline._unpack_latents(tokens, 8, 12, vae_scale_factor=1)  # (B, C, 1, H, W)
    assert torch.equal(theirs[:, :, 0], x)


def test_param_counts():
    tiny = FlowModel(MMDiTConfig.tiny()).num_params()
    small = FlowModel(MMDiTConfig.small()).num_params()
    print(f"tiny: {tiny:,} params, small: {small:,} params")
    assert tiny < 1_000_000
    assert 5_000_000 <= small <= 8_000_000


def test_output_shapes(model):
    z_t, t, text, mask, source = _inputs()
    with torch.no_grad():
        assert model(z_t, t, Cond(text, mask)).shape == z_t.shape
        assert model(z_t, t, Cond(text, mask, source)).shape == z_t.shape
        small_source = Cond(text, mask, source[:, :, :16, :16])  # Qwen-Image-Edit allows another source size
        assert model(z_t, t, small_source).shape == z_t.shape
        assert model(z_t, 0.5, Cond(text, mask)).shape == z_t.shape  # a scalar t broadcasts


def test_mixed_batch_equals_groups_run_separately(model):
    z_t, t, text, mask, source = _inputs(1)
    has_source = torch.tensor([True, False, False, True])
    with torch.no_grad():
        mixed = model(z_t, t, Cond(text, mask, source, has_source, ["a", "b", "c", "d"]))
        t2i_rows, edit_rows = torch.tensor([1, 2]), torch.tensor([0, 3])
        t2i = model(z_t[t2i_rows], t[t2i_rows], Cond(text[t2i_rows], mask[t2i_rows]))
        edit = model(z_t[edit_rows], t[edit_rows], Cond(text[edit_rows], mask[edit_rows], source[edit_rows]))
        # The source rows of T2I items are ignored.
        other = source.clone()
        other[t2i_rows] = 0.0
        mixed_other = model(z_t, t, Cond(text, mask, other, has_source))
    torch.testing.assert_close(mixed[t2i_rows], t2i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[edit_rows], edit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed_other, mixed, atol=1e-5, rtol=1e-5)


def test_mixed_batch_backpropagates(model):
    z_t, t, text, mask, source = _inputs(2)
    z_t.requires_grad_(True)
    v = model(z_t, t, Cond(text, mask, source, torch.tensor([False, True, False, True])))
    v.square().mean().backward()
    assert z_t.grad is not None and bool((z_t.grad.flatten(1).abs().sum(1) > 0).all())
    assert model.transformer.img_in.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_edit_depends_on_source_and_t2i_ignores_masked_padding(model):
    z_t, t, text, mask, source = _inputs(3)
    with torch.no_grad():
        v_edit = model(z_t, t, Cond(text, mask, source))
        v_edit2 = model(z_t, t, Cond(text, mask, -source))
        assert (v_edit - v_edit2).abs().max() > 1e-3
        v = model(z_t, t, Cond(text, mask))
        assert (v - v_edit).abs().max() > 1e-3
        # Padding columns filled with garbage, and extra padding columns, change nothing.
        garbage = torch.where(mask[..., None], text, torch.randn_like(text) * 10)
        padded = torch.cat([garbage, torch.randn(B, 5, D)], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(B, 5, dtype=torch.bool)], dim=1)
        v_padded = model(z_t, t, Cond(padded, padded_mask))
        assert (model(z_t, t.flip(0), Cond(text, mask)) - v).abs().max() > 1e-3  # t matters
    torch.testing.assert_close(v_padded, v, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip(model, tmp_path):
    z_t, t, text, mask, source = _inputs(4)
    cond = Cond(text, mask, source, torch.tensor([True, False, True, False]))
    model.save_pretrained(tmp_path)
    loaded = FlowModel.from_pretrained(tmp_path).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(z_t, t, cond), model(z_t, t, cond))
        inner = QwenImageTransformer2DModel.from_pretrained(tmp_path, subfolder="transformer")
        direct = QwenImageTransformer2DModel.from_pretrained(tmp_path / "transformer")
    assert inner.config.in_channels == 12 and inner.config.out_channels == 3
    for a, b in zip(direct.state_dict().values(), model.transformer.state_dict().values()):
        assert torch.equal(a, b)
    assert list((tmp_path / "transformer").glob("*.safetensors"))


def test_config_validation():
    with pytest.raises(UserError, match="axes_dims_rope"):
        MMDiTConfig(attention_head_dim=32, axes_dims_rope=(8, 8, 8))
    with pytest.raises(UserError):
        MMDiTConfig(resolution=33)
    with pytest.raises(ValueError, match="no source"):
        Cond(torch.zeros(2, 3, D), torch.ones(2, 3, dtype=torch.bool), has_source=torch.tensor([True, False]))


def test_pickle_weights_are_refused_never_unpickled(model, tmp_path, monkeypatch):
    """Defect: a folder holding only diffusion_pytorch_model.bin went through torch.load."""
    from safetensors.torch import load_file

    from flashdistill.errors import UserError

    model.save_pretrained(tmp_path)
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(weights)), weights.with_suffix(".bin"))
    weights.unlink()

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(UserError, match=r"only pickle weights \(diffusion_pytorch_model.bin\).*safetensors only"):
        FlowModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "the weights do not load"),  # truncated
    (lambda p: p.write_bytes(b"\x00garbage" * 50), "the weights do not load"),
    (lambda p: (p.parents[1] / "flashdistill_model.json").write_text("{"), "not valid JSON"),
    (lambda p: (p.parents[1] / "flashdistill_model.json").write_text('{"config": {"num_layers": -1}}'),
     "config.num_layers must be a positive integer"),
    (lambda p: (p.parent / "config.json").write_text("[}"), "the weights do not load"),
])
def test_damaged_model_folders_are_user_errors_naming_the_file(model, tmp_path, damage, message):
    """Defect: truncated or garbage safetensors and broken JSON in a model folder ended in tracebacks."""
    from flashdistill.errors import UserError

    model.save_pretrained(tmp_path)
    damage(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(UserError, match=message) as err:
        FlowModel.from_pretrained(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
