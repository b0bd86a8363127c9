"""The qwen-image family equals diffusers' own pipelines on tiny folders: a flashdistill sampling loop (our
`v = model(z_t, t, cond)`, our Euler step, the family's sigmas and true CFG) lands on the pipeline's latents."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from flashdistill.conditioning import Cond
from flashdistill.errors import UserError
from flashdistill.flow import interpolate, velocity_target
from flashdistill.models.mmdit import pack, unpack
from flashdistill.models.qwen_image import QwenImageParts
from flashdistill.models.qwen_tiny import write_tiny_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen")
    return {kind: write_tiny_folder(root / kind, kind) for kind in ("t2i", "edit", "edit-plus")}


def _our_sampling(family, cond, neg, nfe, height, width, scale, seed):
    """Euler from t=1 with true CFG, written with flashdistill's pieces only."""
    c, h, w = family.latent_shape(height, width)
    z = randn_tensor((1, 1, c, h, w), generator=torch.Generator().manual_seed(seed))[:, 0]  # the pipeline's draw
    model = family.flow_model(height)
    sigmas = family.sigmas(nfe, height, width)
    for t, t_next in zip(sigmas[:-1], sigmas[1:]):
        v = family.cfg(model(z, t, cond), model(z, t, neg), scale)
        z = z + (t_next - t) * v
    return z


def test_t2i_matches_pipeline(folders, one_thread):
    family = QwenImageParts(folders["t2i"])
    args = dict(prompt="a red cat on a mat", negative_prompt=" ", true_cfg_scale=3.0, height=64, width=48,
                num_inference_steps=3)
    want = family.pipe(**args, generator=torch.Generator().manual_seed(0), output_type="latent").images
    cond = family.cond(["a red cat on a mat"])
    neg = family.cond([" "])
    z = _our_sampling(family, cond, neg, 3, 64, 48, 3.0, seed=0)
    assert torch.allclose(pack(z), want, atol=1e-5), (pack(z) - want).abs().max()
    assert torch.allclose(family.sigmas(3, 64, 48), family.pipe.scheduler.sigmas)
    # decode + postprocess equal the pipeline's image
    image = family.pipe(**args, generator=torch.Generator().manual_seed(0), output_type="np").images
    ours = family.decode(unpack(want, 8, 6)).permute(0, 2, 3, 1).numpy()
    assert np.allclose(ours, image, atol=1e-5)


@pytest.mark.parametrize("kind", ["edit", "edit-plus"])
def test_edit_matches_pipeline(folders, kind, one_thread):
    family = QwenImageParts(folders[kind])
    source = Image.fromarray((np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8))
    args = dict(image=source, prompt="make it blue", negative_prompt=" ", true_cfg_scale=2.5, height=32, width=32,
                num_inference_steps=2)
    want = family.pipe(**args, generator=torch.Generator().manual_seed(1), output_type="latent").images
    cond = family.cond(["make it blue"], [source])  # the VL model sees the source; the VAE gives its latents
    neg_emb, neg_mask = family.encode_prompts([" "], [source])
    neg = Cond(neg_emb, neg_mask, cond.source)
    assert cond.source.shape[1:] == (16, 104, 156)  # the pipelines' 1024² VAE area at aspect 3:2
    z = _our_sampling(family, cond, neg, 2, 32, 32, 2.5, seed=1)
    assert torch.allclose(pack(z), want, atol=1e-5), (pack(z) - want).abs().max()


def test_latents_are_normalised_as_the_pipeline(folders, one_thread):
    family = QwenImageParts(folders["edit"], parts=("vae",))
    pixels = torch.rand(2, 3, 32, 48) * 2 - 1
    ours = family.encode_images(pixels)
    theirs = family.pipe._encode_vae_image(pixels.unsqueeze(2), generator=None)[:, :, 0]
    assert torch.allclose(ours, theirs, atol=1e-6)
    mean = torch.tensor(family.vae_config["latents_mean"])
    assert not torch.allclose(mean, torch.zeros(16))  # the tiny folder's statistics are not the identity
    assert family.pipe.text_encoder is None and family.pipe.transformer is None  # only the VAE is resident


def test_packing_and_time_convention(folders):
    family = QwenImageParts(folders["t2i"], parts=("transformer",))
    x = torch.randn(2, 16, 6, 4)
    packed = family.pipe._pack_latents(x, 2, 16, 6, 4)
    assert torch.equal(pack(x), packed)
    assert torch.equal(unpack(packed, 6, 4), family.pipe._unpack_latents(packed, 48, 32, 8)[:, :, 0])
    # one scheduler step from z_t with the true velocity eps - x lands exactly on z_{t'} of our path
    eps, t, t_next = torch.randn_like(x), 0.8, 0.3
    scheduler = FlowMatchEulerDiscreteScheduler()  # no shift: the step rule alone
    scheduler.set_timesteps(sigmas=[t, t_next])
    step = scheduler.step(pack(velocity_target(x, eps)), scheduler.timesteps[0], pack(interpolate(x, eps, t)))
    assert torch.allclose(step.prev_sample, pack(interpolate(x, eps, t_next)), atol=1e-6)


def test_cfg_rule_preserves_norm():
    cond, neg = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    out = QwenImageParts.cfg(cond, neg, 4.0)
    assert torch.allclose(pack(out).norm(dim=-1), pack(cond).norm(dim=-1), atol=1e-5)
    assert torch.allclose(QwenImageParts.cfg(cond, neg, 1.0), cond, atol=1e-6)


def test_user_errors(folders, tmp_path):
    with pytest.raises(UserError, match="model_index.json"):
        QwenImageParts(tmp_path)
    family = QwenImageParts(folders["t2i"], parts=("text",))
    with pytest.raises(UserError, match="cannot encode an edit source"):
        family.encode_prompts(["x"], [Image.new("RGB", (8, 8))])
    with pytest.raises(UserError, match="not loaded"):
        family.flow_model()
