"""bench.gan_gate at toy size: oracles once, the GAN continued across calls, one curve point per call."""

import json
import sys

import pytest

from bench import gan_gate

ORACLE = ["engine=debug", "engine.max_steps=20", "method.data.renders.resolution=16",
          "method.data.renders.batch_size=8", "method.data.renders.subdivisions=2", "method.width=8",
          "method.levels=2", "method.evaluation.samples=16", "method.evaluation.batch_size=8",
          "samples_per_shard=16"]  # fmt: skip
GAN = ["engine=debug", "method.data.real.resolution=16", "method.data.real.batch_size=8",
       "method.data.real.subdivisions=2", "method.z_dim=16", "method.w_dim=16", "method.mapping_layers=2",
       "method.channel_base=128", "method.channel_max=16", "method.fake_batch=8", "method.evaluation.samples=16",
       "method.evaluation.batch_size=8", "method.evaluation.kid_subsets=2", "method.evaluation.kid_subset_size=8",
       "samples_per_shard=16"]  # fmt: skip


def test_the_gate_verdicts():
    assert gan_gate.passes({"valid_mask_share": 0.95, "azimuth_tv": 0.1}) == {"valid_mask_share": True,
                                                                              "azimuth_tv": True}  # fmt: skip
    assert gan_gate.passes({"valid_mask_share": 0.85, "azimuth_tv": 0.2}) == {"valid_mask_share": False,
                                                                              "azimuth_tv": False}  # fmt: skip


def test_a_second_call_continues_the_gan_and_adds_a_point(tmp_path, monkeypatch, capsys):
    for steps in (6, 12):
        argv = ["gan_gate", "--work", str(tmp_path), "--minutes", "5", "--oracle-set", *ORACLE,
                "--set", *GAN, f"engine.max_steps={steps}"]  # fmt: skip
        monkeypatch.setattr(sys, "argv", argv)
        gan_gate.main()
    curve = [json.loads(line) for line in (tmp_path / "curve.jsonl").read_text().splitlines()]
    assert [p["steps"] for p in curve] == [5, 11]  # the second call resumed at step 6
    assert curve[1]["training_minutes"] > curve[0]["training_minutes"] > 0
    assert all(set(p["gate"]) == set(gan_gate.GATE) and p["fd_real_floor"] >= 0 for p in curve)
    assert curve[1]["oracle_calls"]["segment"] == 32  # samples and renders, 16 each
    assert capsys.readouterr().out.count("oracle: mask IoU") == 2
    assert (tmp_path / "oracle" / "models").is_dir()
    marks = [
        line.split(" ", 2)[2] for line in (tmp_path / "gate.log").read_text().splitlines() if line.startswith("bench ")
    ]
    gan_start, oracle_eval = (
        marks.index(f"start run {tmp_path / 'gan'}"),
        marks.index(f"start eval {tmp_path / 'oracle'}"),
    )
    assert gan_start < oracle_eval  # the GAN trained beside the oracles, not after them
    with pytest.raises(SystemExit, match="renderloop run failed"):
        bad = ["gan_gate", "--work", str(tmp_path / "bad"), "--oracle-set", "method.width=7"]
        monkeypatch.setattr(sys, "argv", bad)
        gan_gate.main()
