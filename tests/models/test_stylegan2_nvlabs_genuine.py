"""Our loader against networks built and pickled by NVlabs' own stylegan2-ada-pytorch code.

NVlabs' code is not part of the project and its snapshots embed its source, so no such file is
committed: these tests build them where a checkout is present
(``RENDERLOOP_NVLABS_STYLEGAN2_ADA=/path/to/stylegan2-ada-pytorch``) and skip elsewhere; CI runs
the same comparisons against structural replicas in ``test_stylegan2_checkpoints.py``.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import sys

import pytest
import torch

from renderloop.models.stylegan2.checkpoints import load_nvlabs_pickle
from tests.models.helpers import perturbed

CHECKOUT = os.environ.get("RENDERLOOP_NVLABS_STYLEGAN2_ADA", "")
pytestmark = pytest.mark.skipif(not os.path.isdir(CHECKOUT), reason="needs a stylegan2-ada-pytorch checkout")


@pytest.fixture(scope="module")
def nvlabs():
    sys.path.insert(0, CHECKOUT)
    try:
        from training import networks

        yield networks
    finally:
        sys.path.remove(CHECKOUT)


def _snapshot(**networks) -> io.BytesIO:
    """Pickled as stylegan2-ada-pytorch's training loop saves a ``network-snapshot``."""
    data = {"training_set_kwargs": {"resolution": 16}}
    data |= {k: copy.deepcopy(v).eval().requires_grad_(False).cpu() for k, v in networks.items()}
    blob = io.BytesIO()
    pickle.dump(data, blob)
    blob.seek(0)
    return blob


@pytest.mark.parametrize("conv_clamp", [None, 256])
@pytest.mark.parametrize("c_dim", [0, 4])
@pytest.mark.parametrize("num_fp16_res", [0, 4])
def test_genuine_generators_and_discriminators_match(nvlabs, conv_clamp, c_dim, num_fp16_res):
    synthesis = {"channel_base": 256, "channel_max": 32, "num_fp16_res": num_fp16_res}
    if conv_clamp is not None:  # as NVlabs' train.py passes it; otherwise the file omits it
        synthesis["conv_clamp"] = conv_clamp
    G = nvlabs.Generator(32, c_dim, 32, 16, 3, mapping_kwargs={"num_layers": 2}, synthesis_kwargs=synthesis)
    G = perturbed(G, "resample_filter")
    with torch.no_grad():  # large activations: a wrong clamp would show
        for name, p in G.named_parameters():
            if name.endswith("affine.bias"):
                p.add_(100.0)
    D = perturbed(nvlabs.Discriminator(c_dim, 16, 3, **synthesis), "resample_filter")
    blob = _snapshot(G=G, D=D, G_ema=G).getvalue()
    z = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    c = torch.eye(4)[:, :c_dim] if c_dim else None
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for which in ("G", "G_ema"):
        ours = load_nvlabs_pickle(io.BytesIO(blob), which=which)
        for psi in (1.0, 0.7):
            # force_fp32: NVlabs' fp16 layers are a speed setting; ours run in float32 here
            want = G(z, c if c_dim else torch.zeros(4, 0), truncation_psi=psi, noise_mode="const", force_fp32=True)
            got = ours(z, c, truncation_psi=psi, noise_mode="const")
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), which  # float32 summation order
    ours_d = load_nvlabs_pickle(io.BytesIO(blob), which="D")
    want = D(x, c if c_dim else torch.zeros(4, 0), force_fp32=True)
    assert torch.allclose(ours_d(x, c), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
