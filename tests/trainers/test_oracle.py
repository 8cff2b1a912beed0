"""The oracles: scores that know their answers, the counted API, and a short run that learns."""

from __future__ import annotations

import json
import math

import pytest
import torch

from renderloop.cli import main
from renderloop.config import ConfigError, load_config
from renderloop.datasets import category
from renderloop.models.oracles import PartSegmenter, ViewpointRegressor
from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.trainers.methods import method_config
from renderloop.trainers.oracle import Oracle, OracleBudgetError
from renderloop.trainers.scores import angle_error_deg, class_iou, confusion, mean_iou, scored_classes
from renderloop.trainers.stylegan2_quality import QualityConfig, quality_report


def test_iou_counts_over_the_whole_dataset():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    counts = confusion(pred[:1], target[:1], 3) + confusion(pred[1:], target[1:], 3)
    assert counts.sum() == 8 and counts[0, 0] == 1 and counts[2, 0] == 2
    iou = class_iou(counts)
    assert iou.tolist() == pytest.approx([1 / 4, 2 / 3, 2 / 4])
    assert class_iou(confusion(target, target, 4))[:3].tolist() == [1.0, 1.0, 1.0]
    assert math.isnan(class_iou(confusion(target, target, 4))[3])  # absent everywhere: undefined


def test_a_part_almost_never_seen_is_left_out_of_the_mean():
    """Part 3 has 1 of 2,001 true part pixels (under 0.1%) and no model learns it: counting it
    would take a third off a perfect segmenter's parts mIoU."""
    counts = torch.diag(torch.tensor([500, 1000, 1000, 0]))
    counts[3, 0] = 1  # its one pixel predicted as background
    scored = scored_classes(counts)
    assert scored.tolist() == [True, True, True, False]
    assert mean_iou(counts, scored, background=False) == pytest.approx(1.0)
    assert mean_iou(counts, scored, background=True) == pytest.approx((500 / 501 + 2) / 3)
    assert mean_iou(counts, torch.ones(4, dtype=torch.bool), background=False) == pytest.approx(2 / 3)
    assert scored_classes(torch.stack([counts, counts])).tolist() == scored.tolist()  # folds summed
    counts[3, 3] = 10  # 11 of 2,011: counted, and scored as it is
    assert scored_classes(counts)[3] and mean_iou(counts, scored_classes(counts), background=False) < 1


def test_angle_errors_wrap_around():
    pred = torch.tensor([math.radians(359), math.radians(10), math.pi])
    target = torch.tensor([math.radians(1), math.radians(350), 0.0])
    assert angle_error_deg(pred, target).tolist() == pytest.approx([2.0, 20.0, 180.0], abs=1e-4)


def test_viewpoint_angles_come_back_from_a_perfect_output():
    azimuth, elevation = torch.tensor([0.1, 3.0, 6.0]), torch.tensor([0.0, 0.2, 0.5])
    out = torch.stack([2 * azimuth.cos(), 2 * azimuth.sin(), elevation], -1)  # scale does not matter
    got_azimuth, got_elevation = ViewpointRegressor.angles(out)
    assert torch.allclose(got_azimuth, azimuth, atol=1e-5) and torch.equal(got_elevation, elevation)


def test_oracle_counts_images_and_refuses_calls_beyond_its_budget():
    oracle = Oracle(PartSegmenter(10, width=8, levels=2), ViewpointRegressor(width=8), "cpu", budget=5)
    images = torch.rand(3, 3, 16, 16)
    assert oracle.segment(images).shape == (3, 16, 16)
    assert oracle.mask(images[:2]).dtype == torch.bool
    assert oracle.viewpoint(images)[0].shape == (3,)
    assert oracle.calls == {"segment": 5, "viewpoint": 3}
    with pytest.raises(OracleBudgetError, match="5 images asked so far, 1 more exceed the budget of 5"):
        oracle.segment(images[:1])
    assert oracle.calls["segment"] == 5  # a refused call is not counted
    with pytest.raises(ValueError, match=r"expected images \[B, 3, H, W\]"):
        oracle.viewpoint(torch.rand(3, 16, 16))


def test_oracles_cannot_train_on_test_objects():
    node = load_config("train", ["method=oracle_debug", "method.data.renders.object_seeds=test"]).method
    with pytest.raises(ConfigError, match=r"oracle training \[2000000, 2010000\) and test .* share objects"):
        method_config(node)
    node = load_config("train", ["method=oracle_debug", "method.data.renders.category=''"]).method
    with pytest.raises(ConfigError, match="needs a simulator category"):
        method_config(node)


def test_a_short_run_learns_masks_and_the_api_loads_it(tmp_path, capsys):
    args = [
        "method=oracle_debug", "engine=debug", "device=cpu", "engine.max_steps=150", "samples_per_shard=16",
        "method.data.renders.resolution=24", "method.data.renders.batch_size=16", "method.lr=3e-3",
        "method.evaluation.samples=64", "method.evaluation.batch_size=16",
        f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
    ]  # fmt: skip
    assert main(["run", *args]) == 0
    assert main(["eval", *args]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "run" / "eval" / "oracle_eval.json").read_text())
    assert results["test_images"] == 64 and results["calls"] == {"segment": 64, "viewpoint": 64}
    assert results["mask_iou"] > 0.6  # an untrained segmenter scores about 0.3
    assert results["part_miou_with_background"] > results["constant_part_miou_with_background"]
    assert set(results["part_iou"]) == set(category.PART_NAMES)
    oracle = Oracle.load(tmp_path / "run", device="cpu", budget=2)
    assert oracle.mask(torch.rand(2, 3, 24, 24)).shape == (2, 24, 24)
    with pytest.raises(OracleBudgetError):
        oracle.mask(torch.rand(1, 3, 24, 24))
    assert oracle.embed(torch.rand(5, 3, 24, 24)).shape[0] == 5 and oracle.calls["embed"] == 5  # not budgeted

    # The GAN quality report on the category uses this oracle for features, masks and viewpoints.
    G = Generator(GeneratorConfig(z_dim=8, w_dim=8, img_resolution=32, channel_base=64, channel_max=16,
                                  mapping_layers=1)).eval()  # fmt: skip
    source = load_config("train", ["method=oracle_debug", "method.data.renders.resolution=32"]).method.data["renders"]
    ev = QualityConfig(samples=16, batch_size=8, oracle_run=str(tmp_path / "run"), kid_subsets=2, kid_subset_size=8)
    report = quality_report(G, source, ev, torch.device("cpu"))
    assert report["encoder"] == "oracle segmenter" and report["fd"] > report["fd_real_floor"]
    assert report["valid_mask_share"] < report["valid_mask_share_renders"]  # an untrained G draws no objects
    assert 0 <= report["azimuth_tv"] <= 1
    assert report["oracle_calls"] == {"segment": 32, "viewpoint": 32, "embed": 48}
