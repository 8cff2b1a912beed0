"""Instances: copies that start alike, rows routed to their group's copy, gradients kept apart,
frozen weights shared, and one Adam over the stack training each copy as it would train alone."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from renderloop.models.instances import Instances


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))


def test_each_group_of_rows_goes_through_its_own_copy():
    single, stacked = _net(), Instances(_net(), 3)
    x = torch.rand(6, 3, 4, 4)
    torch.testing.assert_close(stacked(x), single(x))  # started alike
    with torch.no_grad():
        stacked.module[4].bias[1] += 1.0  # copy 1 alone changes: rows 2 and 3
    moved = (stacked(x) - single(x)).abs().sum(1)
    assert torch.allclose(moved, torch.tensor([0.0, 0, 2, 2, 0, 0]), atol=1e-5)
    torch.testing.assert_close(stacked.copy(1)(x[2:4]), stacked(x)[2:4])
    with pytest.raises(ValueError, match="equal groups"):
        stacked(torch.rand(4, 3, 4, 4))


def test_copies_train_under_one_optimizer_as_each_would_alone():
    """Adam with an L2 term in the gradient, two copies on two images, equals two separate runs."""
    x = torch.rand(2, 3, 4, 4)
    target = torch.tensor([[1.0, -1.0], [0.5, 2.0]])

    def train(net: nn.Module, rows: slice) -> None:
        opt = torch.optim.Adam(net.parameters(), lr=0.01, weight_decay=5e-4)
        for _ in range(5):
            opt.zero_grad()
            out = net(x[rows])
            ((out - target[rows]) ** 2).mean(1).sum().backward()  # the sum of each image's own loss
            opt.step()

    stacked = Instances(_net(), 2)
    train(stacked, slice(0, 2))
    for i in range(2):
        alone = _net()
        train(alone, slice(i, i + 1))
        for (name, a), b in zip(alone.named_parameters(), stacked.copy(i).parameters(), strict=True):
            torch.testing.assert_close(a, b, msg=name)


def test_frozen_weights_stay_shared():
    net = _net()
    net[0].requires_grad_(False)
    stacked = Instances(copy.deepcopy(net), 4)
    assert stacked.module[0].weight.shape == net[0].weight.shape  # not stacked
    assert stacked.module[4].weight.shape == (4, *net[4].weight.shape)
    assert sorted(stacked.stacked) == ["1.bias", "1.weight", "4.bias", "4.weight"]
    with pytest.raises(ValueError, match="count"):
        Instances(_net(), 0)
