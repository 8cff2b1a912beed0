"""bench.gan2shape: rows over seeds with the baselines scored beside the method, GAN2Shape against
Unsup3d, and a tiny run of two variants end to end on a stand-in gate folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gan2shape import (
    ABLATED,
    ablation,
    against_control,
    averaged,
    compare,
    jobs,
    joined,
    kept,
    shared,
    summarize,
    trajectories,
)
from renderloop.cli import main
from renderloop.models.stylegan2 import Generator, GeneratorConfig
from renderloop.models.stylegan2.io import save_generator


def _run(variant: str, seed: int, side: float) -> dict:
    row = {"gan2shape": "gan2shape", "unsup3d": "unsup3d"}.get(variant, "gan2shape")
    scores = {f"{row}/side": side, f"{row}/mad": 10 * side}
    if variant == "gan2shape":
        scores |= {"flat/side": 9.0 + seed, "flat/mad": 50.0}
    return {"variant": variant, "seed": seed, "scores": scores}


def test_rows_and_the_comparison_with_unsup3d():
    runs = [_run("gan2shape", s, v) for s, v in enumerate((1.0, 2.0, 3.0))]
    runs += [_run("unsup3d", s, v) for s, v in enumerate((5.0, 6.0, 7.0))]
    rows = summarize(runs)
    mean, half, n = rows["gan2shape"]["side"]
    assert (mean, n) == (pytest.approx(2.0), 3) and half == pytest.approx(4.303 / 3**0.5, rel=1e-3)
    assert rows["unsup3d"]["mad"][0] == pytest.approx(60.0)
    assert rows["flat"]["side"][0] == pytest.approx(10.0) and "ellipsoid" not in rows
    diff = compare(runs)["side"]
    assert diff["difference"] == pytest.approx(-4.0) and diff["exceeds_interval"]


def test_two_variants_run_end_to_end(tmp_path):
    gate = tmp_path / "gate"
    torch.manual_seed(0)
    G = Generator(GeneratorConfig(z_dim=16, w_dim=16, img_resolution=16, channel_base=128, channel_max=16,
                                  mapping_layers=2))  # fmt: skip
    save_generator(G, gate / "gan" / "eval" / "generator.pt")
    oracle = ["method=oracle_debug", "engine=debug", "device=cpu", "engine.max_steps=2", "samples_per_shard=8",
              f"storage.root={tmp_path / 'oracle-data'}", f"run_dir={gate / 'oracle'}"]  # fmt: skip
    assert main(["run", *oracle]) == 0
    tiny = ["method.width=8", "method.zdim=16", "method.init_steps=1", "method.rounds=1", "method.first_round=[1,1,1]",
            "method.data.images.batch_size=4", "method.renders.subdivisions=2", "method.evaluation.samples=4",
            "method.evaluation.batch_size=4", "method.evaluation.average_samples=4", "engine=debug",
            "engine.max_steps=4", "samples_per_shard=8"]  # fmt: skip
    out = tmp_path / "g2s.json"
    done = subprocess.run([sys.executable, "-m", "bench.gan2shape", "--gate", str(gate), "--resolution", "16",
                           "--variants", "gan2shape", "unsup3d", "per_image_pseudo", "--seeds", "0", "--instances", "1",
                           "--instance-chunks", "2", "--instance-samples", "2", "--work", str(tmp_path / "w"),
                           "--out", str(out), "--set", *tiny], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["meta"]["argv"][:4] == ["python", "-m", "bench.gan2shape", "--gate"]  # no checkout path
    assert [r["variant"] for r in report["runs"]] == ["gan2shape", "unsup3d", "per_image_pseudo"]
    assert {r["seed"] for r in report["runs"]} == {0}
    assert [r["steps"] for r in report["runs"]] == [3, 3, 3]  # the last logged step of engine.max_steps=4
    method, baseline, per_image = (r["phases"] for r in report["runs"])
    assert set(per_image) == {"init", "albedo", "offset", "shape"}
    assert report["runs"][2]["scores"]["test_images"] == 2  # its two instances, where the others score four
    assert report["runs"][2]["chunks"] == 2 and sorted(report["runs"][2]["scores"]["per_image"]["index"]) == [0, 1]
    assert 1 <= report["shared"]["renders"] <= 2 and "per_image_pseudo" in report["shared"]["rows"]
    settings = json.loads((tmp_path / "w" / "per_image_pseudo-s0" / "run" / "method.json").read_text())
    assert settings["instances"]["count"] == 1 and settings["projected_view"] == "pseudo"
    second = json.loads((tmp_path / "w" / "per_image_pseudo-s0-c1" / "run" / "method.json").read_text())
    assert second["instances"]["first"] == 1  # the next block of test renders
    assert set(method) == {"init", "albedo", "offset", "shape"} and set(baseline) == {"shape"}
    assert baseline["shape"]["logged_steps"] == 4 and method["offset"]["samples_per_s"] > 0
    assert set(report["rows"]) == {"gan2shape", "unsup3d", "per_image_pseudo", "ellipsoid", "average", "flat"}
    assert report["rows"]["gan2shape"]["side"][2] == 1
    shutil.rmtree(tmp_path / "w" / "gan2shape-s0" / "data")  # a second call reuses finished runs ...
    call = [sys.executable, "-m", "bench.gan2shape", "--gate", str(gate), "--resolution", "16", "--variants",
            "gan2shape", "--seeds", "0", "--work", str(tmp_path / "w"), "--set", *tiny]  # fmt: skip
    again = subprocess.run(call, capture_output=True, text=True)
    assert again.returncode == 0 and "gan2shape seed 0" in again.stdout
    other = subprocess.run([*call[:-1], "engine.max_steps=5"], capture_output=True, text=True)
    assert other.returncode != 0 and "holds a run made with other settings" in other.stderr  # ... if made alike


def test_trajectories_average_each_step_over_the_seeds_that_kept_it():
    def run(seed: int, points: list[tuple[int, str, float]]) -> dict:
        trajectory = [{"step": s, "phase": p, "side": v, "mad": 10 * v} for s, p, v in points]
        return {"variant": "gan2shape", "seed": seed, "scores": {"trajectory": trajectory}}

    runs = [run(0, [(2, "init", 1.0), (4, "shape", 3.0)]), run(1, [(2, "init", 2.0)]), _run("unsup3d", 0, 5.0)]
    paths = trajectories(runs)
    assert list(paths) == ["gan2shape"]  # runs without snapshots have no trajectory
    first, last = paths["gan2shape"]
    assert first == {"step": 2, "phase": "init", "seeds": 2, "side": pytest.approx(1.5), "mad": pytest.approx(15.0)}
    assert (last["step"], last["seeds"], last["side"]) == (4, 1, pytest.approx(3.0))


def test_runs_that_scored_different_renders_are_compared_on_those_they_share():
    def run(variant: str, index: list[int], side: list[float]) -> dict:
        row = "unsup3d" if variant == "unsup3d" else "gan2shape"
        per_image = {"index": index, "frontal": [i == 0 for i in index], f"{row}/side": side,
                     f"{row}/mad": [10 * v for v in side]}  # fmt: skip
        return {"variant": variant, "seed": 0, "scores": {"per_image": per_image}}

    runs = [run("unsup3d", [0, 1, 2, 3], [1.0, 2.0, 3.0, 4.0]), run("per_image", [0, 1], [5.0, 7.0])]
    indices, restricted = shared(runs)
    assert indices == {0, 1}
    kept_lists = restricted[0]["scores"].pop("per_image")
    assert restricted[0]["scores"] == {"unsup3d/side": 1.5, "unsup3d/frontal_side": 1.0, "unsup3d/mad": 15.0,
                                       "unsup3d/frontal_mad": 10.0}  # fmt: skip
    assert kept_lists == {"index": [0, 1], "frontal": [True, False], "unsup3d/side": [1.0, 2.0],
                          "unsup3d/mad": [10.0, 20.0]}  # fmt: skip
    render1 = averaged(kept(runs[1]["scores"]["per_image"], {1}))
    assert render1["gan2shape/side"] == 7.0
    assert "gan2shape/frontal_side" not in render1  # render 1 is not frontal


def test_per_image_ablations_are_the_joint_ablations_on_the_per_image_method():
    from bench.gan2shape import VARIANTS

    for change in ("no_offset_reg", "flat_prior", "with_symmetry"):
        config, overrides = VARIANTS[f"per_image_pseudo_{change}"]
        assert config == "gan2shape"
        assert overrides == VARIANTS["per_image_pseudo"][1] + VARIANTS[change][1]


def test_a_variant_is_paired_with_its_control_by_seed():
    runs = [_run("per_image_pseudo", s, v) for s, v in enumerate((9.0, 8.0, 10.0))]
    runs += [_run("per_image_pseudo_no_projection", s, v) for s, v in enumerate((10.0, 9.5, 11.0, 4.0))]
    diff = against_control(runs, "per_image_pseudo", "per_image_pseudo_no_projection")["side"]
    assert diff["seeds"] == [0, 1, 2]  # seed 3 ran the control alone
    assert diff["per_seed"] == pytest.approx([-1.0, -1.5, -1.0])
    mean, sd = -7 / 6, (1 / 12) ** 0.5
    assert diff["difference"] == pytest.approx(mean) and diff["ci95"] == pytest.approx(4.303 * sd / 3**0.5, rel=1e-3)
    assert diff["exceeds_interval"]  # a steady difference is measurable where Welch's over seeds is not
    assert not compare(runs, "per_image_pseudo", "per_image_pseudo_no_projection")["side"]["exceeds_interval"]
    assert against_control(runs, "per_image_pseudo", "no_projection") == {}


def test_a_paired_difference_is_also_summarized_render_by_render():
    """Per seed, over the renders both runs scored: the mean difference, its t interval, and how many
    renders went down, on all renders and on the near-frontal ones."""

    def run(variant: str, side: list[float]) -> dict:
        per_image = {"index": [0, 1, 2, 3], "frontal": [True, False, False, True], "gan2shape/side": side,
                     "gan2shape/mad": side}  # fmt: skip
        scores = {"gan2shape/side": sum(side) / 4, "gan2shape/mad": sum(side) / 4, "per_image": per_image}
        return {"variant": variant, "seed": 0, "scores": scores}

    runs = [run("per_image_pseudo", [1.0, 2.0, 3.0, 5.0]), run("per_image_pseudo_no_projection", [2.0, 4.0, 4.0, 4.0])]
    (r,) = against_control(runs, "per_image_pseudo", "per_image_pseudo_no_projection")["side"]["per_render"]
    diffs = [-1.0, -2.0, -1.0, 1.0]
    sd = (sum((d + 0.75) ** 2 for d in diffs) / 3) ** 0.5
    assert (r["renders"], r["lower"]) == (4, 3) and r["difference"] == pytest.approx(-0.75)
    assert r["ci95"] == pytest.approx(3.182 * sd / 2, rel=1e-3)
    assert r["frontal"] == {"renders": 2, "lower": 1, "difference": 0.0, "ci95": pytest.approx(12.706)}
    runs[1]["scores"]["per_image"]["index"] = [0, 1, 2, 4]  # other renders: nothing to pair
    assert "per_render" not in against_control(runs, "per_image_pseudo", "per_image_pseudo_no_projection")["side"]


def test_an_ablation_is_paired_with_its_parent_on_the_renders_both_scored():
    def run(variant: str, seed: int, side: list[float]) -> dict:
        index = list(range(len(side)))
        per_image = {"index": index, "frontal": [i == 0 for i in index], "gan2shape/side": side,
                     "gan2shape/mad": side}  # fmt: skip
        return {"variant": variant, "seed": seed, "scores": {"per_image": per_image}}

    # The method scored 4 renders per seed, the ablation the first 2 only (one block of them).
    runs = [run("per_image_pseudo", s, [1.0 + s, 3.0, 50.0, 50.0]) for s in range(3)]
    runs += [run("per_image_pseudo_flat_prior", s, [2.0 + s, 4.0 + s]) for s in range(3)]
    found = ablation(runs, "per_image_pseudo_flat_prior")
    assert found["renders"] == 2
    assert found["rows"]["per_image_pseudo"]["side"][0] == pytest.approx(2.5)  # not 26: renders 2, 3 left out
    d = found["difference"]["side"]
    assert d["per_seed"] == pytest.approx([1.0, 1.5, 2.0]) and d["seeds"] == [0, 1, 2]
    seed1 = d["per_render"][1]  # renders 0, 1: 3 - 2 and 5 - 3
    assert (seed1["renders"], seed1["lower"], seed1["difference"]) == (2, 0, pytest.approx(1.5))
    assert ABLATED["per_image_pseudo_flat_prior"] == "per_image_pseudo"
    assert not {"per_image_pseudo", "per_image_pseudo_no_projection", "no_offset_reg"} & set(ABLATED)


def test_blocks_of_renders_are_joined_into_one_run_per_seed():
    class Args:
        variants, seeds, instance_chunks, ablation_chunks = ["gan2shape", "per_image_pseudo"], [0, 1], 2, 0

    blocks = [[("per_image_pseudo", seed, block) for block in (0, 1)] for seed in (0, 1)]
    assert jobs(Args) == [("gan2shape", 0, 0), *blocks[0], ("gan2shape", 1, 0), *blocks[1]]  # seed by seed
    Args.variants, Args.seeds, Args.ablation_chunks = ["per_image_pseudo", "per_image_pseudo_flat_prior"], [0], 1
    assert jobs(Args) == [*blocks[0], ("per_image_pseudo_flat_prior", 0, 0)]  # the ablation: its first block only

    def block(index: list[int], side: list[float], psnr: float) -> dict:
        per_image = {"index": index, "frontal": [i == 2 for i in index], "gan2shape/side": side,
                     "gan2shape/mad": [10 * v for v in side], "flat/side": [9.0] * len(index),
                     "flat/mad": [40.0] * len(index)}  # fmt: skip
        scores = {"per_image": per_image, "test_images": len(index), "frontal_images": sum(per_image["frontal"]),
                  "inversion_psnr": psnr, "oracle_segment_calls": 100}  # fmt: skip
        return {"variant": "per_image_pseudo", "seed": 0, "run_seconds": 10.0, "eval_seconds": 1.0, "scores": scores}

    run = joined([block([0, 1], [1.0, 2.0], 20.0), block([2, 3, 4], [3.0, 4.0, 5.0], 25.0)])
    scores = run["scores"]
    assert scores["gan2shape/side"] == pytest.approx(3.0) and scores["gan2shape/mad"] == pytest.approx(30.0)
    assert scores["gan2shape/frontal_side"] == pytest.approx(3.0) and scores["flat/side"] == pytest.approx(9.0)
    assert (scores["test_images"], scores["frontal_images"], scores["oracle_segment_calls"]) == (5, 1, 200)
    assert scores["inversion_psnr"] == pytest.approx(23.0)  # over renders: (2 × 20 + 3 × 25) / 5
    assert (run["run_seconds"], run["eval_seconds"], run["chunks"]) == (20.0, 2.0, 2)
    single = block([0], [1.0], 20.0)
    assert joined([single]) is single


def test_a_run_stopped_short_by_the_deadline_is_continued_and_scored_once_it_reaches_its_steps(tmp_path, monkeypatch):
    import time
    from types import SimpleNamespace

    import bench.gan2shape as bench

    reached, calls = iter([2, 4]), []

    def renderloop(command: str, *overrides: str, log) -> float:
        calls.append((command, [o for o in overrides if o.startswith("engine.max_minutes")]))
        run = tmp_path / "gan2shape-s0" / "run"
        if command == "run":  # the engine saves where its time ran out, then at its last step
            (run / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run / "checkpoints" / "latest").write_text(f"step{next(reached)}")
        else:
            (run / "eval" / "gan2shape_eval.json").write_text(json.dumps({"gan2shape/side": 1.0}))
        return 5.0

    monkeypatch.setattr(bench, "renderloop", renderloop)
    args = SimpleNamespace(gate=str(tmp_path), device="cpu", steps=4, snapshot_every=0, resolution=16, set=[])
    assert bench.one_run("gan2shape", 0, args, tmp_path, deadline=time.monotonic() + 30) is None  # under a minute
    assert calls == []
    assert bench.one_run("gan2shape", 0, args, tmp_path, deadline=time.monotonic() + 600) is None  # stopped at 2
    run = bench.one_run("gan2shape", 0, args, tmp_path, deadline=time.monotonic() + 600)
    assert [c for c, _ in calls] == ["run", "run", "eval"] and 9.9 < float(calls[0][1][0].split("=")[1]) <= 10
    assert (run["run_seconds"], run["eval_seconds"]) == (10.0, 5.0)  # both calls' training
    assert not (tmp_path / "gan2shape-s0" / "run" / "checkpoints").exists()  # scored: its checkpoints go
    assert bench.one_run("gan2shape", 0, args, tmp_path) == run and len(calls) == 3  # finished: reused


def test_a_scored_run_copied_to_another_host_is_reused_there_under_its_settings_alone(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import bench.gan2shape as bench

    calls = []

    def renderloop(command: str, *overrides: str, log) -> float:
        calls.append(command)
        run = Path("w") / "gan2shape-s0" / "run"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "latest").write_text("step4")
        if command == "eval":
            (run / "eval").mkdir(exist_ok=True)
            (run / "eval" / "gan2shape_eval.json").write_text(json.dumps({"gan2shape/side": 1.0}))
        return 5.0

    monkeypatch.setattr(bench, "renderloop", renderloop)
    args = SimpleNamespace(gate="g", device="cpu", steps=4, snapshot_every=0, resolution=16, set=[])
    first, other = tmp_path / "first", tmp_path / "other"
    first.mkdir()
    monkeypatch.chdir(first)
    run = bench.one_run("gan2shape", 0, args, Path("w"))
    assert calls == ["run", "eval"]
    for name in ("gan2shape-s0.json", "gan2shape-s0/bench_settings.json"):  # what travels: no checkpoint, no log
        (other / "w" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / "w" / name, other / "w" / name)
    monkeypatch.chdir(other)
    assert bench.one_run("gan2shape", 0, args, Path("w")) == run and calls == ["run", "eval"]  # reused, not trained
    with pytest.raises(SystemExit, match="other settings"):
        bench.one_run("gan2shape", 0, SimpleNamespace(**{**vars(args), "steps": 5}), Path("w"))
