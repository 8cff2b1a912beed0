"""GAN inversion: PSNR knows its answer, the generator's own images are found again, each image of a
batch is inverted as if alone, and images of another size are refused."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.models.stylegan2.inversion import invert, psnr


def _generator() -> Generator:
    torch.manual_seed(0)
    cfg = GeneratorConfig(z_dim=32, w_dim=32, img_resolution=16, mapping_layers=2, channel_base=256, channel_max=32)
    return Generator(cfg).eval()


def _own_images(G: Generator, n: int = 3) -> torch.Tensor:
    with torch.no_grad():
        ws = G.mapping(torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(5)))
        return (G.synthesis(ws, noise_mode="const").clamp(-1, 1) + 1) / 2


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 3, 8, 8)
    b = a.clone()
    b[0] += 0.1  # mse 0.01: 20 dB
    b[1, :, :4] += 0.5  # mse 0.125: 9.03 dB
    assert psnr(b, a).tolist() == pytest.approx([20.0, -10 * math.log10(0.125)], abs=1e-4)


@pytest.mark.parametrize("space", ["w", "w+"])
def test_the_generators_own_images_are_found_again(space):
    G = _generator()
    target = _own_images(G)
    start = invert(G, target, steps=0, space=space).psnr
    found = invert(G, target, steps=150, space=space)
    assert found.ws.shape == (3, G.num_ws, G.w_dim) and found.images.shape == target.shape
    assert (found.psnr > start + 5).all() and (found.psnr > 15).all()  # from 7-11 dB at the average latent
    if space == "w":
        assert torch.equal(found.ws, found.ws[:, :1].expand_as(found.ws))
    assert all(p.requires_grad for p in G.parameters())  # frozen only while inverting


def test_each_image_of_a_batch_is_inverted_as_if_alone():
    G = _generator()
    target = _own_images(G)
    together = invert(G, target, steps=20, features=lambda x: x.mean(1))
    alone = invert(G, target[1:2], steps=20, features=lambda x: x.mean(1))
    assert torch.allclose(together.ws[1:2], alone.ws, atol=1e-5)


def test_images_of_another_size_are_refused():
    with pytest.raises(ValueError, match=r"images must be \[B, 3, 16, 16\] for this generator; got \[1, 3, 32, 32\]"):
        invert(_generator(), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="space must be 'w' or 'w\\+'"):
        invert(_generator(), torch.zeros(1, 3, 16, 16), space="z")
