"""The GAN methods' category: canonical frame, symmetry, named parts, object seeds and their ranges."""

from __future__ import annotations

import pytest
import torch

from renderloop.config import ConfigError
from renderloop.datasets import category
from renderloop.datasets.simulator import Simulator, SimulatorConfig
from renderloop.renderers.meshes import icosphere

VEHICLE = {"resolution": 32, "batch_size": 8, "subdivisions": 2, "category": "vehicle", "num_parts": 10,
           "elevation_deg": (0.0, 30.0)}  # fmt: skip


def _mirror_index(dirs: torch.Tensor) -> torch.Tensor:
    """For each direction, the index of its mirror image across x = 0."""
    mirrored = dirs * torch.tensor([-1.0, 1.0, 1.0])
    distance, index = (mirrored.unsqueeze(1) - dirs).norm(dim=-1).min(1)
    assert distance.max() < 1e-5  # the icosphere is symmetric across x = 0
    return index


def _vehicles(seeds):
    dirs = icosphere(2).verts
    return dirs, *category.vehicle(dirs, [torch.Generator().manual_seed(s) for s in seeds])


def test_vehicles_are_left_right_symmetric_but_not_front_back():
    dirs, points, _ = _vehicles([3, 14, 15, 92])
    mirror = _mirror_index(dirs)
    flip_x = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(points[:, mirror] * flip_x, points, atol=1e-5)
    front_back = (dirs * torch.tensor([1.0, 1.0, -1.0]) - dirs.unsqueeze(1)).norm(dim=-1).argmin(0)
    flip_z = torch.tensor([1.0, 1.0, -1.0])
    asymmetry = (points[:, front_back] * flip_z - points).norm(dim=-1).amax(-1)
    assert (asymmetry > 0.05).all(), asymmetry  # a hood in front, a cabin towards the rear


def test_vehicles_stand_upright_in_the_canonical_frame():
    _, points, _ = _vehicles(range(16))
    extent = points.amax(1) - points.amin(1)  # (N, 3)
    assert (extent[:, 2] > extent[:, 0]).all() and (extent[:, 0] > extent[:, 1]).all()  # long, then wide, then low
    assert points.norm(dim=-1).amax(-1).allclose(torch.ones(16))
    labels = category.part_labels(icosphere(2).verts)
    height = {n: points[:, labels == i, 1].mean().item() for i, n in enumerate(category.PART_NAMES)}
    assert height["roof"] > height["hood"] > height["bottom"]


def test_named_parts_mirror_left_and_right():
    dirs = icosphere(2).verts
    labels = category.part_labels(dirs)
    assert set(labels.tolist()) == set(range(len(category.PART_NAMES)))  # every part has vertices
    names = [category.PART_NAMES[i] for i in labels[_mirror_index(dirs)]]
    swapped = [n.replace("left", "?").replace("right", "left").replace("?", "right") for n in names]
    assert swapped == [category.PART_NAMES[i] for i in labels]


def test_an_object_is_a_function_of_its_seed_alone():
    _, points_a, colours_a = _vehicles([7, 8])
    _, points_b, colours_b = _vehicles([8, 99, 7])
    assert torch.equal(points_a[0], points_b[2]) and torch.equal(colours_a[1], colours_b[0])
    assert not torch.equal(points_a[0], points_a[1])


def test_renders_record_objects_from_their_range_in_the_canonical_frame():
    sim = Simulator(SimulatorConfig(**VEHICLE, object_seeds="test"))
    batch = sim.generate(5, 0)
    first, end = category.SEED_RANGES["test"]
    assert ((batch["object_seed"] >= first) & (batch["object_seed"] < end)).all()
    assert batch["seg"].max() <= len(category.PART_NAMES) and batch["mask"].any((1, 2)).all()
    assert (batch["elevation"] >= 0).all() and (batch["elevation"] <= torch.pi / 6 + 1e-6).all()
    keys = [f"s{i}" for i in range(len(batch["rgb"]))]
    meta = sim.to_columns(batch, [0] * len(keys), keys)["meta.json"]
    assert [m["object"] for m in meta] == batch["object_seed"].tolist()
    assert sim.meta["object_seeds"] == [first, end] and sim.meta["category"] == "vehicle"
    again = Simulator(SimulatorConfig(**VEHICLE, object_seeds="test")).generate(5, 0)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_the_purposes_seed_ranges_are_disjoint_and_overlaps_are_refused():
    category.check_disjoint(category.SEED_RANGES)
    with pytest.raises(ConfigError, match=r"gan \[0, 1000000\) and test \[10, 20\) share objects"):
        category.check_disjoint({"gan": category.SEED_RANGES["gan"], "test": (10, 20)})


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"category": "chair"}, "source.category"),
        ({"num_parts": 6}, "source.num_parts"),
        ({"object_seeds": "training"}, "source.object_seeds"),
        ({"object_seeds": (5, 5)}, "source.object_seeds"),
    ],
)
def test_bad_category_config_names_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        SimulatorConfig(**{**VEHICLE, **kwargs})
    assert info.value.key == key


def test_streams_without_a_category_keep_their_digest():
    plain = {"resolution": 32, "batch_size": 4}
    assert SimulatorConfig(**plain).digest() == SimulatorConfig(**plain, category="", object_seeds="gan").digest()
