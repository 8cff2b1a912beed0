"""The style interpreter: votes, disagreement and uncertainty with known answers, a file round
trip, and an ensemble that learns a separable per-pixel labelling."""

from __future__ import annotations

import math

import pytest
import torch

from renderloop.models.style_interpreter import (
    StyleInterpreter,
    image_uncertainty,
    js_divergence,
    load_interpreter,
    majority_vote,
    save_interpreter,
)


def test_votes_divergence_and_uncertainty_know_their_answers():
    confident = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 10.0, 0.0]])  # members' picks: 0, 1, 1
    logits = confident[:, None, :].repeat(1, 4, 1)  # 3 members, 4 pixels
    assert majority_vote(logits).tolist() == [1, 1, 1, 1]
    assert majority_vote(torch.stack([confident[0], confident[1]])[:, None]).tolist() == [0]  # a tie: lowest id
    agree = confident[1].expand(3, 5, 3)
    assert js_divergence(agree).abs().max() < 1e-6
    two = torch.tensor([[[100.0, 0.0]], [[0.0, 100.0]]])  # two members, certain and opposite
    assert js_divergence(two).item() == pytest.approx(math.log(2), abs=1e-6)
    pixels = torch.tensor([[0.0] * 18 + [1.0, 3.0], [2.0] * 20])
    assert image_uncertainty(pixels, top_share=0.1).tolist() == pytest.approx([2.0, 2.0])


def test_the_file_round_trip_and_a_bad_file(tmp_path):
    interpreter = StyleInterpreter(channels=6, classes=4, members=2).eval()
    path = save_interpreter(interpreter, tmp_path / "i.pt", {"generator": "g.pt"})
    loaded, meta = load_interpreter(path)
    x = torch.randn(7, 6)
    assert meta == {"generator": "g.pt"} and torch.equal(loaded(x), interpreter(x))
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a style interpreter"):
        load_interpreter(tmp_path / "bad.pt")


def test_the_fused_ensemble_gives_the_members_logits():
    torch.manual_seed(0)
    interpreter = StyleInterpreter(channels=12, classes=5, members=4)
    for norm in (m for m in interpreter.modules() if isinstance(m, torch.nn.BatchNorm1d)):  # a trained network's
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.2, 3.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
    with pytest.raises(ValueError, match="eval"):
        interpreter.fused()
    interpreter.eval()
    x = torch.randn(300, 12)
    fused = interpreter.fused()
    with torch.no_grad():
        assert fused.members == 4 and torch.allclose(fused(x), interpreter(x), rtol=1e-5, atol=1e-5)


def test_labels_from_layer_maps_equal_labels_from_upsampled_features():
    from renderloop.models.stylegan2.latents import upsampled_features

    torch.manual_seed(0)
    maps = [torch.randn(2, 3, 4, 4), torch.randn(2, 5, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 2, 16, 16)]
    fused = StyleInterpreter(channels=14, classes=3, members=2).eval().fused()
    with torch.no_grad():
        expected = fused(upsampled_features(maps, (16, 16)).flatten(0, 1))  # [M, 2 * 256, classes]
        assert torch.allclose(fused.on_maps(maps, (16, 16)), expected, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="maps have 11 channels"):
            fused.on_maps(maps[1:], (16, 16))


def test_the_ensemble_learns_a_separable_labelling():
    torch.manual_seed(0)
    projection = torch.randn(16, 3)
    features = torch.randn(4096, 16)
    labels = (features @ projection).argmax(1)
    interpreter = StyleInterpreter(channels=16, classes=3, members=3)
    opt = torch.optim.Adam(interpreter.parameters(), lr=1e-2)
    for _ in range(150):
        idx = torch.randint(0, 3072, (256,))
        loss = torch.nn.functional.cross_entropy(interpreter(features[idx]).flatten(0, 1), labels[idx].repeat(3))
        opt.zero_grad()
        loss.backward()
        opt.step()
    held_out = majority_vote(interpreter.eval()(features[3072:]))
    assert (held_out == labels[3072:]).float().mean() > 0.9  # chance: about 1/3
