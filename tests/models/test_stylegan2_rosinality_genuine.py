"""Our loader against generators built and saved by rosinality's own stylegan2-pytorch code.

rosinality's code is not part of the project: these tests run where a checkout is present
(``RENDERLOOP_ROSINALITY_STYLEGAN2=/path/to/stylegan2-pytorch``) and skip elsewhere; CI runs the
same comparison against state dicts written by our own code in ``test_stylegan2_checkpoints.py``.
Its ``op`` package compiles CUDA extensions when imported; the compiler is stubbed out so that
its own CPU paths (native upfirdn2d, leaky ReLU) run, which is what its code does on a CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import pytest
import torch
from torch.utils import cpp_extension

from renderloop.models.stylegan2.checkpoints import load_rosinality
from tests.models.helpers import perturbed

CHECKOUT = os.environ.get("RENDERLOOP_ROSINALITY_STYLEGAN2", "")
pytestmark = pytest.mark.skipif(not os.path.isdir(CHECKOUT), reason="needs a rosinality stylegan2-pytorch checkout")


@pytest.fixture(scope="module")
def rosinality():
    saved = {k: v for k, v in sys.modules.items() if k in ("model", "op") or k.startswith("op.")}
    compile_extension = cpp_extension.load
    cpp_extension.load = lambda *args, **kwargs: types.SimpleNamespace()  # never called on CPU tensors
    sys.path.insert(0, CHECKOUT)
    try:
        import model

        yield model
    finally:
        cpp_extension.load = compile_extension
        sys.path.remove(CHECKOUT)
        for k in [k for k in sys.modules if k in ("model", "op") or k.startswith("op.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _checkpoint(path, G, D, size, channel_multiplier, latent_avg) -> None:
    """Saved as its train.py saves one (g, d, g_ema, both optimizers' states, args, ada_aug_p), with
    the ``latent_avg`` its convert_weight.py adds."""
    optims = {}
    for name, net in (("g_optim", G), ("d_optim", D)):
        opt = torch.optim.Adam(net.parameters(), lr=0.0)
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        optims[name] = opt.state_dict()
    args = argparse.Namespace(size=size, n_mlp=2, channel_multiplier=channel_multiplier, latent=32, r1=10.0)
    state = {"g": G.state_dict(), "d": D.state_dict(), "g_ema": G.state_dict(), **optims, "args": args}
    torch.save(state | {"ada_aug_p": 0.0, "latent_avg": latent_avg}, path)


@pytest.mark.parametrize("size,channel_multiplier", [(16, 2), (64, 1)])
def test_genuine_networks_match(rosinality, tmp_path, size, channel_multiplier):
    G = perturbed(rosinality.Generator(size, 32, 2, channel_multiplier=channel_multiplier), "kernel").eval()
    D = perturbed(rosinality.Discriminator(size, channel_multiplier=channel_multiplier), "kernel").eval()
    latent_avg = G.mean_latent(64).detach()[0]
    _checkpoint(tmp_path / "r.pt", G, D, size, channel_multiplier, latent_avg)
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    for key in ("g_ema", "g"):
        ours = load_rosinality(tmp_path / "r.pt", key=key)
        assert ours.img_resolution == size and ours.cfg.conv_clamp is None
        for psi in (1.0, 0.7):
            with torch.no_grad():
                want, _ = G([z], truncation=psi, truncation_latent=latent_avg[None], randomize_noise=False)
                got = ours(z, truncation_psi=psi, noise_mode="const")
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (key, psi)  # float32 summation order
    ours_d = load_rosinality(tmp_path / "r.pt", key="d")
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = D(x), ours_d(x)
    assert got.shape == want.shape == (8, 1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
