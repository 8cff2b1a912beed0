"""bench.aign: the producer layout on a GPU, each run's seed and budget, and the statistics it
prints (mean, std and 95% t interval over seeds; differences against their Welch interval)."""

import math
from argparse import Namespace
from pathlib import Path

import pytest

from bench.aign import (
    EXPERIMENTS,
    UNLIMITED_STEPS,
    _producers,
    _train_args,
    aggregate,
    budget_check,
    compare,
    is_baseline,
    report_lines,
    summary,
)
from renderloop.stats import welch_difference as difference


def _args(**kw) -> Namespace:
    return Namespace(**{"device": "cuda", "parallel": 2, "cores": 16, "producer_device": "auto", **kw})


def test_auto_keeps_simulator_sources_on_the_gpu_and_the_others_on_host_cores():
    sfm = _producers("aign/sfm", _args())
    assert "cluster.producer_device=cuda" in sfm and "cluster.producer_threads=1" in sfm
    # 16 cores, 2 runs: 8 each, less the trainer and its loader; two thirds for SfM's input frames
    assert "cluster.producers_by_role={input:4,memory:2}" in sfm
    pose = _producers("aign/pose", _args(parallel=3, cores=7))
    assert "cluster.producer_device=cpu" in pose
    assert "cluster.producers_by_role={input:1,memory:1}" in pose  # at least one per stream
    assert "cluster.producer_device=cpu" in _producers("aign/sfm", _args(producer_device="cpu"))


def test_a_cpu_run_keeps_its_producers_in_process():
    assert _producers("aign/sfm", _args(device="cpu")) == []


def _cpu(**kw) -> Namespace:
    return _args(**{"device": "cpu", "steps_scale": 0.5, "max_minutes": 0.0, "budget": "steps", "set": [], **kw})


def test_each_run_gets_its_seed_and_the_budget_its_comparison_row_gets():
    steps = {name: EXPERIMENTS[name][1] // 2 for name in ("pose_both", "pose_reconstruction")}
    assert steps["pose_both"] == steps["pose_reconstruction"]  # compared rows: the same steps
    args = _train_args("pose_reconstruction", 2, _cpu(), Path("r"), Path("d"))
    assert "engine.seed=2" in args and f"engine.max_steps={steps['pose_both']}" in args
    assert "method.loss=reconstruction" in args and "engine.max_minutes=0.0" in args
    timed = _train_args(
        "pose_both", 0, _cpu(budget="time", max_minutes=5.0, set=["engine.seed=9"]), Path("r"), Path("d")
    )
    assert f"engine.max_steps={UNLIMITED_STEPS}" in timed and "engine.max_minutes=5.0" in timed
    assert timed[-1] == "engine.seed=9"  # --set wins


def test_summary_and_difference_against_hand_computed_values():
    s = summary([1.0, 2.0, 3.0])
    assert (s["mean"], s["std"], s["n"]) == (2.0, 1.0, 3)
    assert s["ci95"] == pytest.approx(4.303 / math.sqrt(3))  # t(0.975, 2 df)
    assert math.isnan(summary([5.0])["ci95"])
    # Welch: both variances 1/3 per mean, 4 degrees of freedom (t = 2.776).
    d = difference([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert d["difference"] == 3.0 and d["ci95"] == pytest.approx(2.776 * math.sqrt(2 / 3))
    assert d["exceeds_interval"]
    near = difference([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert near["difference"] == 1.0 and not near["exceeds_interval"]
    assert difference([1.0, 1.0], [1.0, 1.0])["exceeds_interval"] is False


def _run(seed: int, steps: int, **metrics) -> dict:
    return {"seed": seed, "steps": steps, "eval": {**metrics, "attribute_share_truth": 0.3, "samples": 64.0}}


def test_seeds_are_summarised_baselines_kept_and_the_biased_claim_tested():
    assert is_baseline("performer/baseline_mean_pose_pa_mpjpe_mm") and is_baseline("nearest_train_pa_mpjpe_mm")
    assert is_baseline("attribute_share_baseline_mean") and is_baseline("attribute_share_truth")
    assert not is_baseline("performer/pa_mpjpe_mm") and not is_baseline("attribute_share_outputs")
    args = _cpu()
    target = EXPERIMENTS["inpaint_both"][1] // 2
    share = {"inpaint_both": [0.30, 0.31, 0.29], "inpaint_biased": [0.40, 0.41, 0.42]}
    experiments = {}
    for name, values in share.items():
        runs = [
            _run(i, target, attribute_share_outputs=v, psnr_box_db=14.0 + i, baseline_mean_psnr_box_db=13.0)
            for i, v in enumerate(values)
        ]
        experiments[name] = {"runs": runs, "budget": budget_check(name, runs, args), "summary": aggregate(runs)}
    both = experiments["inpaint_both"]
    assert both["budget"]["equal"] and set(both["summary"]["metrics"]) == {"attribute_share_outputs", "psnr_box_db"}
    assert both["summary"]["baselines"]["baseline_mean_psnr_box_db"] == 13.0
    assert both["summary"]["metrics"]["psnr_box_db"]["mean"] == 15.0
    found = {c["metric"]: c for c in compare(experiments)}
    assert found["attribute_share_outputs"]["difference"] == pytest.approx(0.11)
    assert found["attribute_share_outputs"]["exceeds_interval"]
    assert found["psnr_box_db"]["difference"] == 0 and not found["psnr_box_db"]["exceeds_interval"]
    text = "\n".join(report_lines(experiments, compare(experiments)))
    assert "inpaint_biased − inpaint_both, attribute_share_outputs: 0.11 ±" in text and "exceeds its interval" in text
    assert "baseline_mean_psnr_box_db=13" in text
    # A run that --max-minutes cut short makes its row's budget unequal, and every comparison says so.
    runs = [_run(0, target - 1, attribute_share_outputs=0.3, psnr_box_db=14.0)]
    experiments["inpaint_both"]["budget"] = budget_check("inpaint_both", runs, args)
    assert not experiments["inpaint_both"]["budget"]["equal"]
    assert all(not c["equal_budget"] for c in compare(experiments))
