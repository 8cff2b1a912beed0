"""Fixed-seed debug runs reproduce their recorded loss curves (``tests/assets/losses``): a change
meant to move code, not behaviour, must leave every logged loss where it was.

The curves are six steps of ``renderloop run`` with producer threads on the CPU. A change that is
meant to alter a method's numbers records its curve again and says why in its commit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from renderloop.cli import main

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "losses"


@pytest.mark.parametrize(
    ("method", "asset"), [("simgan_debug", "simgan_debug.json"), ("aign/sfm_debug", "aign_sfm_debug.json")]
)
def test_debug_run_reproduces_its_recorded_losses(tmp_path, method, asset):
    run_dir = tmp_path / "run"
    args = ["run", f"method={method}", "engine=debug", "engine.max_steps=6", "device=cpu",
            f"storage.root={tmp_path / 'data'}", f"run_dir={run_dir}", "samples_per_shard=8",
            "cluster.local_producers=threads"]  # fmt: skip
    assert main(args) == 0
    got = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    want = json.loads((ASSETS / asset).read_text())
    assert len(got) == len(want)
    for step, (row, expected) in enumerate(zip(got, want, strict=True)):
        losses = {k: v for k, v in row.items() if k.startswith("loss/")}
        assert losses.keys() == expected.keys(), f"step {step}"
        for key, value in expected.items():
            assert losses[key] == pytest.approx(value, rel=1e-4, abs=1e-5), f"step {step} {key}"
