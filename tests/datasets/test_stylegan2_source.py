"""source=stylegan2 multi-view groups: each group draws distinct view codes from a pool, the same
ones for the same (seed, batch), and a sample's ``view`` and ``view_name`` name the code it used."""

from __future__ import annotations

import pytest
import torch

from renderloop.config import ConfigError
from renderloop.datasets.stylegan2 import StyleGAN2Source, StyleGAN2SourceConfig
from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.models.stylegan2.io import save_generator
from renderloop.models.stylegan2.latents import ViewCodes

LAYERS = 2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny generator and a registry of five codes, each a constant its index tells apart."""
    root = tmp_path_factory.mktemp("stylegan2-source")
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16,
                                  mapping_layers=2))  # fmt: skip
    codes = ViewCodes(LAYERS, {f"code{i}": torch.full((LAYERS, 16), float(i + 1)) for i in range(5)})
    codes.save(root / "codes.pt")
    return {"checkpoint": str(save_generator(G, root / "g.pt")), "view_codes": str(root / "codes.pt"), "codes": codes}


def _source(files, **kw) -> StyleGAN2Source:
    kw = {"batch_size": 12, "views": 3, "view_layers": LAYERS, "view_codes": files["view_codes"], **kw}
    return StyleGAN2Source(StyleGAN2SourceConfig(checkpoint=files["checkpoint"], **kw))


def test_groups_draw_distinct_codes_of_the_pool_and_name_the_code_they_used(files):
    source = _source(files)
    assert source.view_names == [f"code{i}" for i in range(5)]  # default: the whole registry
    batch = source.generate(1, 0)
    view = batch["view"].view(4, 3)
    assert all(len(set(group.tolist())) == 3 for group in view)  # distinct within each group
    for i, code in enumerate(batch["view"].tolist()):  # the styles are the drawn code's
        assert torch.equal(batch["w"][i, :LAYERS], files["codes"].codes[source.view_names[code]])
    w = batch["w"].view(4, 3, *batch["w"].shape[1:])
    assert torch.equal(w[:, :, LAYERS:], w[:, :1, LAYERS:].expand_as(w[:, :, LAYERS:]))  # one object per group
    again = source.generate(1, 0)
    assert torch.equal(again["view"], batch["view"]) and torch.equal(again["rgb"], batch["rgb"])
    assert torch.equal(batch["z"][::3], source.z(1, 0))  # the draw leaves the objects alone
    draws = torch.cat([source.generate(1, index)["view"] for index in range(1, 4)])
    assert not torch.equal(draws[:12], batch["view"]) and set(draws.tolist()) == set(range(5))
    samples = source.to_samples(batch, [1] * 12, [f"k{i}" for i in range(12)])
    for sample, code in zip(samples, batch["view"].tolist(), strict=True):
        assert sample["view.txt"] == code and sample["meta.json"]["view_name"] == f"code{code}"


def test_named_pools_index_the_names_and_a_pool_of_views_gives_every_group_all(files):
    names = ["code4", "code0", "code2", "code3"]
    source = _source(files, view_names=names)
    batch = source.generate(2, 0)
    assert int(batch["view"].max()) < 4
    for i, code in enumerate(batch["view"].tolist()):
        assert torch.equal(batch["w"][i, :LAYERS], files["codes"].codes[names[code]])
    every = _source(files, view_names=names[:3]).generate(2, 0)["view"].view(4, 3)
    assert torch.equal(every.sort(1).values, torch.arange(3).expand(4, 3))
    sampled = _source(files, view_codes="").generate(2, 0)  # codes sampled from the generator: a pool of views
    assert torch.equal(sampled["view"].view(4, 3).sort(1).values, torch.arange(3).expand(4, 3))


@pytest.mark.parametrize(
    ("kw", "key", "says"),
    [
        ({"view_names": ["code0", "code1"]}, "source.view_names", "pool of 2"),
        ({"view_names": ["code0", "code1", "code1"]}, "source.view_names", "twice"),
        ({"views": 1, "view_names": ["code0"]}, "source.view_names", "views >= 2"),
    ],
)
def test_pools_that_cannot_fill_a_group_are_refused_with_the_config(kw, key, says):
    with pytest.raises(ConfigError, match=f"{key}.*{says}"):
        StyleGAN2SourceConfig(checkpoint="g.pt", batch_size=12, **{"views": 3, **kw})


def test_pools_the_registry_cannot_give_are_refused(files):
    with pytest.raises(ConfigError, match="source.view_codes.*pool of 5"):
        _source(files, views=6)
    with pytest.raises(ConfigError, match=r"source.view_names.*\['nope'\]"):
        _source(files, view_names=["code0", "code1", "nope"])
