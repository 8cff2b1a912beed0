"""method=part_segmentation: fold scores with known answers, a short run on K repeated renders
(the few-shot row) scored by object folds, and training on test objects refused."""

from __future__ import annotations

import json

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets import category
from renderloop.trainers.part_segmentation import (
    PartSegmentation,
    fold_scores,
    label_counts,
    mirror_classes,
    mirrored,
    selected_scores,
)

from .helpers import evaluate, make_streams


def _config(tmp_path, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        ["method=part_segmentation_debug", "engine=debug", f"storage.root={tmp_path / 'data'}",
         f"run_dir={tmp_path / 'run'}", "samples_per_shard=4", "device=cpu", *overrides],
        TrainConfig,
    )  # fmt: skip


def test_mirroring_flips_the_chosen_images_and_swaps_left_and_right_parts():
    names = ["background", *category.PART_NAMES]
    lut = mirror_classes()
    assert (
        names[lut[names.index("left_front")]] == "right_front" and names[lut[names.index("right_rear")]] == "left_rear"
    )
    assert all(lut[names.index(n)] == names.index(n) for n in ("background", "front", "hood", "roof", "bottom"))
    assert torch.equal(lut[lut], torch.arange(len(names)))  # mirroring twice is the identity
    rgb = torch.arange(2 * 3 * 2 * 3, dtype=torch.float32).view(2, 3, 2, 3)
    left, right, hood = (names.index(n) for n in ("left_front", "right_front", "hood"))
    seg = torch.tensor([[[left, hood, 0], [0, 0, 0]], [[left, hood, 0], [0, 0, 0]]])
    out, labels = mirrored(rgb, seg, torch.tensor([True, False]))
    assert torch.equal(out[0], rgb[0].flip(2)) and torch.equal(out[1], rgb[1])
    assert labels[0, 0].tolist() == [0, hood, right] and torch.equal(labels[1], seg[1])
    assert mirrored(rgb, None, torch.tensor([True, True]))[1] is None  # the inpainting pretext has no labels


def test_the_constant_prediction_is_each_pixels_most_frequent_label():
    labels = torch.tensor([[[0, 1], [2, 2]], [[0, 1], [3, 2]], [[1, 2], [3, 0]]])
    assert label_counts(labels, classes=4).argmax(-1).tolist() == [[0, 1], [3, 2]]
    assert label_counts(labels[:2], classes=4).argmax(-1).tolist() == [[0, 1], [2, 2]]  # ties: the lowest class
    assert label_counts(labels, classes=4)[1, 0].tolist() == [0, 0, 1, 2]


def test_fold_scores_are_dataset_level_iou_per_fold():
    perfect = torch.diag(torch.tensor([50, 10, 5]))
    half = torch.tensor([[50, 0, 0], [0, 5, 5], [0, 0, 5]])  # class 1: IoU 5 / 10; class 2: 5 / 10
    scores = fold_scores(torch.stack([perfect, half]))
    assert scores["miou"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["miou_with_background"] == pytest.approx((1.0 + (1 + 0.5 + 0.5) / 3) / 2)
    assert scores["miou_fold_std"] == pytest.approx(torch.tensor([1.0, 0.5]).std().item())


def test_fold_scores_leave_out_a_part_the_test_set_almost_never_shows():
    seen = torch.diag(torch.tensor([5000, 1000, 1000, 0]))
    rare = seen.clone()
    rare[3, 0] = 1  # the only true pixel of part 3, in one fold: never predicted
    scores = fold_scores(torch.stack([seen, rare]))
    assert scores["miou"] == pytest.approx(1.0) and scores["miou_fold_std"] == 0


def test_each_fold_chooses_the_weights_best_on_it_and_the_others_score_them():
    perfect, half = torch.diag(torch.tensor([50, 10, 5])), torch.tensor([[50, 0, 0], [0, 5, 5], [0, 0, 5]])
    # Candidate 0 is perfect on fold 0 and half right on fold 1; candidate 1 the other way round.
    counts = torch.stack([torch.stack([perfect, half]), torch.stack([half, perfect])])
    scores, chosen = selected_scores(counts)
    assert chosen == [0, 1]  # each fold picks the candidate that is perfect on it ...
    assert scores["selected/miou"] == pytest.approx(0.5)  # ... and the other fold sees it half right
    with pytest.raises(ValueError, match=">= 2 folds"):
        selected_scores(counts[:, :1])


def test_k_labelled_renders_train_and_are_scored_on_test_object_folds(tmp_path):
    cfg = _config(tmp_path, "engine.max_steps=6", "engine.snapshot_every=2")
    make_streams(cfg, samples=4)  # K = 4 renders, repeated by the closed stream
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["loss/segmenter/pixel_accuracy"] <= 1 for r in rows)
    report = evaluate(cfg)
    assert report["test_images"] == 10 and report["folds"] == 2
    assert 0 <= report["miou"] <= 1 and 0 <= report["miou_with_background"] <= 1
    assert 0 <= report["constant/miou"] <= 1 and 0 < report["constant/miou_with_background"] <= 1  # the trivial row
    assert (tmp_path / "run" / "eval" / "part_segmentation_eval.png").exists()
    # Snapshots at steps 2, 4 and 6 and the last weights: each fold chooses among the four.
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == [f"step0000000{i}" for i in (2, 4, 6)]
    assert (
        report["selected/candidates"] == 4 and 0 <= report["selected/miou"] <= 1 and len(report["selected/chosen"]) == 2
    )
    with pytest.raises(ConfigError, match="share objects"):
        _config(tmp_path, "method.data.labeled.object_seeds=test")


def test_the_transfer_row_pretrains_by_inpainting_then_starts_from_it(tmp_path):
    pretext = _config(tmp_path / "pre", "method.task=inpaint", "engine.max_steps=3")
    make_streams(pretext, samples=8)
    train(pretext, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "pre" / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["loss/segmenter/hole_l1"] > 0 for r in rows)
    assert evaluate(pretext)["hole_l1"] > 0
    exported = torch.load(tmp_path / "pre" / "run" / "models" / "segmenter.pt", weights_only=True)
    tuned = _config(tmp_path / "tune", f"method.init_from={tmp_path / 'pre' / 'run'}")
    start = PartSegmentation(tuned.method_config, torch.device("cpu")).build()["segmenter"].module.state_dict()
    assert all(torch.equal(start[k], exported[k]) for k in exported)
    with pytest.raises(ConfigError, match="method.init_from"):
        _config(tmp_path, f"method.init_from={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="method.task"):
        _config(tmp_path, "method.task=depth")
