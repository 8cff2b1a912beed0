"""method=part_segmentation: fold scores with known answers, a short run on K repeated renders
(the few-shot row) scored by object folds, and training on test objects refused."""

from __future__ import annotations

import json

import pytest
import torch

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.trainers.part_segmentation import fold_scores

from .helpers import evaluate, make_streams


def _config(tmp_path, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        ["method=part_segmentation_debug", "engine=debug", f"storage.root={tmp_path / 'data'}",
         f"run_dir={tmp_path / 'run'}", "samples_per_shard=4", "device=cpu", *overrides],
        TrainConfig,
    )  # fmt: skip


def test_fold_scores_are_dataset_level_iou_per_fold():
    perfect = torch.diag(torch.tensor([50, 10, 5]))
    half = torch.tensor([[50, 0, 0], [0, 5, 5], [0, 0, 5]])  # class 1: IoU 5 / 10; class 2: 5 / 10
    scores = fold_scores(torch.stack([perfect, half]))
    assert scores["miou"] == pytest.approx((1.0 + 0.5) / 2)
    assert scores["miou_with_background"] == pytest.approx((1.0 + (1 + 0.5 + 0.5) / 3) / 2)
    assert scores["miou_fold_std"] == pytest.approx(torch.tensor([1.0, 0.5]).std().item())


def test_k_labelled_renders_train_and_are_scored_on_test_object_folds(tmp_path):
    cfg = _config(tmp_path, "engine.max_steps=6")
    make_streams(cfg, samples=4)  # K = 4 renders, repeated by the closed stream
    train(cfg, [], command="train")
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(0 <= r["loss/segmenter/pixel_accuracy"] <= 1 for r in rows)
    report = evaluate(cfg)
    assert report["test_images"] == 10 and report["folds"] == 2
    assert 0 <= report["miou"] <= 1 and 0 <= report["miou_with_background"] <= 1
    assert (tmp_path / "run" / "eval" / "part_segmentation_eval.png").exists()
    with pytest.raises(ConfigError, match="share objects"):
        _config(tmp_path, "method.data.labeled.object_seeds=test")
