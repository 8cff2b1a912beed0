"""SimGAN's digit experiment end to end at toy size: a live run, then the evaluation whose
numbers must show the gap the experiment is about."""

from __future__ import annotations

import json

from renderloop.cli import main

TOY = [
    "method=simgan_digits", "engine=debug", "device=cpu", "samples_per_shard=16",
    "method.data.synthetic.batch_size=16", "method.data.real.batch_size=16",
    "method.channels=8", "method.blocks=1", "method.disc_channels=[8,8,8,8]", "method.history_size=32",
    "method.pretrain_refiner_steps=2", "method.pretrain_discriminator_steps=2", "method.refiner_updates=1",
    "method.evaluation.train_samples=1024", "method.evaluation.steps=100", "method.evaluation.batch_size=64",
    "method.evaluation.classifier_seeds=2", "method.evaluation.classifier_width=16", "method.evaluation.figure_rows=4",
]  # fmt: skip


def test_digit_experiment_trains_live_and_its_evaluation_shows_the_gap(tmp_path, capsys):
    args = [*TOY, f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}"]
    assert main(["run", *args]) == 0
    assert main(["eval", *args]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "run" / "eval" / "simgan_eval.json").read_text())
    assert results["test_images"] == 2500  # the held-out half of MNIST-5k
    assert results["classifier_seeds"] == 2
    # Handwriting is learned better from handwriting than from print: the gap to close exists.
    assert results["real_error"] + 0.1 < results["synthetic_error"] < results["constant_error"]
    assert results["constant_error"] > 0.85  # ten balanced classes
    for name in ("synthetic", "refined", "real"):
        assert 0 <= results[f"{name}_error"] <= 1 and results[f"{name}_error_ci95"] >= 0
    assert 0.5 <= results["real_vs_synthetic_accuracy"] <= 1
    assert (tmp_path / "run" / "eval" / "simgan_eval.png").stat().st_size > 0
