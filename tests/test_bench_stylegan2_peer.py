"""The StyleGAN2 peer bench: the settings stylegan2-ada-pytorch's ``--cfg auto`` picks, and reading
what its training writes (which ops it ran, seconds per kimg), against a stand-in ``train.py``."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import threading

import pytest

from bench import stylegan2_peer
from bench.stylegan2_peer import auto_settings, nvlabs_plugins, nvlabs_seconds_per_kimg, run_nvlabs


def test_auto_settings_follow_its_formulas():
    s = auto_settings(64, 32)  # batch min(4096 // 64, 32) = 32, γ = 0.0002 · 64² / 32, ema_kimg 10
    assert s["batch"] == 32 and s["r1_gamma"] == pytest.approx(0.0256)
    assert "engine.ema_half_life=312.5" in s["overrides"] and "engine.ema_rampup=0.05" in s["overrides"]
    assert "method.mapping_layers=2" in s["overrides"]
    big = auto_settings(512, 16)  # its own batch there is min(8, 32) = 8: γ = 0.0002 · 512² / 8
    assert big["r1_gamma"] == pytest.approx(6.5536) and "method.channel_base=32768" in big["overrides"]


def test_plugins_and_seconds_per_kimg_are_read_from_its_output():
    log = 'Setting up PyTorch plugin "bias_act_plugin"... Done.\n'
    log += 'Setting up PyTorch plugin "upfirdn2d_plugin"... Failed!\n'
    assert nvlabs_plugins(log) == {"bias_act_plugin": "cuda", "upfirdn2d_plugin": "reference"}
    ticks = [{"Progress/tick": {"num": 1, "mean": t}, "Timing/sec_per_kimg": {"num": 1, "mean": s}}
             for t, s in ((0, 99.0), (1, 4.0), (2, 2.0))]  # fmt: skip
    assert nvlabs_seconds_per_kimg("\n".join(json.dumps(t) for t in ticks)) == [4.0, 2.0]


def test_a_run_of_its_train_script_is_timed_from_its_stats(tmp_path):
    checkout = tmp_path / "nvlabs"
    checkout.mkdir()
    (checkout / "train.py").write_text(textwrap.dedent('''
        import json, sys, pathlib
        args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
        assert args["cfg"] == "auto" and args["aug"] == "noaug" and args["mirror"] == "0", args
        run = pathlib.Path(args["outdir"]) / "00000-images-auto1"
        run.mkdir(parents=True)
        print('Setting up PyTorch plugin "bias_act_plugin"... Done.')
        ticks = [(0, 50.0), (1, 4.0), (2, 2.0), (3, 2.0), (4, 2.0), (5, 2.0)]
        lines = [{"Progress/tick": {"mean": t}, "Timing/sec_per_kimg": {"mean": s}} for t, s in ticks]
        (run / "stats.jsonl").write_text("\\n".join(json.dumps(x) for x in lines))
        (run / "network-snapshot-000004.pkl").write_bytes(b"")
    '''))  # fmt: skip
    args = argparse.Namespace(work=str(tmp_path / "work"), nvlabs=str(checkout), kimg=4, seed=0, channels=None,
                              device="cuda")  # fmt: skip
    result = run_nvlabs(args, tmp_path / "images", auto_settings(64, 32))
    assert result["plugins"] == {"bias_act_plugin": "cuda"} and result["ticks"] == 5
    assert result["kimg_per_s"] == pytest.approx(4 / 8)  # the first fifth of the ticks left out: 4 kimg in 8 s
    assert result["snapshot"].endswith("network-snapshot-000004.pkl")


def test_on_the_cpu_its_training_loop_gets_the_cpu_and_both_networks_the_channels(tmp_path):
    checkout = tmp_path / "nvlabs"
    for package in ("training", "dnnlib"):
        (checkout / package).mkdir(parents=True)
        (checkout / package / "__init__.py").write_text("")
    (checkout / "training" / "training_loop.py").write_text("import torch\n")
    (checkout / "dnnlib" / "util.py").write_text("def construct_class_by_name(*args, class_name=None, **kwargs):\n"
                                                  "    return class_name, kwargs\n")  # fmt: skip
    (checkout / "train.py").write_text(textwrap.dedent('''
        import json, sys, pathlib, torch
        import dnnlib.util
        from training import training_loop
        args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
        assert args["fp32"] == "true" and args["seed"] == "3", args
        assert training_loop.torch.device("cuda", 0) == torch.device("cpu")
        assert training_loop.torch.cuda.max_memory_allocated(0) == 0 and training_loop.torch.zeros(1).sum() == 0
        _, g = dnnlib.util.construct_class_by_name(class_name="training.networks.Generator",
                                                   synthesis_kwargs={"channel_base": 16384, "num_fp16_res": 0})
        _, d = dnnlib.util.construct_class_by_name(class_name="training.networks.Discriminator", channel_max=512)
        assert g["synthesis_kwargs"] == {"channel_base": 2048, "channel_max": 128, "num_fp16_res": 0}, g
        assert (d["channel_base"], d["channel_max"]) == (2048, 128), d
        run = pathlib.Path(args["outdir"]) / "00000-images-auto1"
        run.mkdir(parents=True)
        ticks = [(0, 50.0), (1, 4.0)]
        lines = [{"Progress/tick": {"mean": t}, "Timing/sec_per_kimg": {"mean": s}} for t, s in ticks]
        (run / "stats.jsonl").write_text("\\n".join(json.dumps(x) for x in lines))
    '''))  # fmt: skip
    args = argparse.Namespace(work=str(tmp_path / "work"), nvlabs=str(checkout), kimg=1, seed=3,
                              channels=[2048, 128], device="cpu")  # fmt: skip
    assert run_nvlabs(args, tmp_path / "images", auto_settings(32, 16))["kimg_per_s"] == pytest.approx(1 / 4)


def test_ours_trains_on_the_category_and_is_scored_at_toy_size(tmp_path, monkeypatch, capsys):
    tiny = ["method.channel_max=16", "method.channel_base=128", "method.z_dim=16", "method.w_dim=16",
            "method.data.real.subdivisions=2", "method.evaluation.samples=16", "method.evaluation.batch_size=8",
            "method.evaluation.kid_subsets=2", "method.evaluation.kid_subset_size=8", "engine.data.num_workers=1",
            "engine.log_every=1"]  # fmt: skip
    argv = ["stylegan2_peer", "--resolution", "16", "--batch", "4", "--kimg", "0.02", "--images", "16",
            "--work", str(tmp_path), "--out", str(tmp_path / "peer.json"), "--set", *tiny]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    stylegan2_peer.main()
    report = json.loads((tmp_path / "peer.json").read_text())
    assert report["nvlabs"] is None and report["ours"]["steps"] == 5 and report["ours"]["kimg_per_s"] > 0
    assert len(list((tmp_path / "images").glob("*.png"))) == 16  # the folder NVlabs would read
    quality = report["quality"]["ours"]
    assert quality["samples"] == 16 and quality["fd"] > 0 and 0 <= quality["precision"] <= 1


def test_peer_compat_runs_a_script_with_what_pytorch_1_code_expects(tmp_path):
    """A built extension is importable by name after ``load``; a ``Sampler`` subclass may pass
    its data source up; the script sees its own arguments and imports from its folder."""
    (tmp_path / "helper.py").write_text("VALUE = 7\n")
    (tmp_path / "train.py").write_text(
        textwrap.dedent("""
        import importlib, sys, types
        import torch.utils.cpp_extension, torch.utils.data
        import helper

        class Infinite(torch.utils.data.Sampler):
            def __init__(self, dataset):
                super().__init__(dataset)
                self.dataset = dataset

        print(sys.argv[1:], helper.VALUE, len(Infinite([1, 2]).dataset))
        built = types.ModuleType("fake_plugin")
        torch.utils.cpp_extension._jit_compile = lambda *a, **k: built  # what `load` returns, unbuilt
        assert torch.utils.cpp_extension.load(name="fake_plugin", sources=[]) is built
        assert importlib.import_module("fake_plugin") is built
    """)
    )
    done = subprocess.run([sys.executable, "-m", "bench.peer_compat", str(tmp_path / "train.py"), "--kimg=1"],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['--kimg=1']", "7", "2"]


def test_seeds_are_summarized_per_trainer_and_paired_by_seed(tmp_path):
    from bench.stylegan2_peer import summarize

    def report(seed, fd_nvlabs, fd_ours):
        scores = lambda fd: {"fd": fd, "kid": fd / 100, "precision": 0.9, "recall": 0.1 * seed}  # noqa: E731
        return {"nvlabs": {"kimg_per_s": 0.2}, "ours": {"kimg_per_s": 0.4 + seed / 10},
                "quality": {"nvlabs": scores(fd_nvlabs), "ours": scores(fd_ours)}}  # fmt: skip

    out = summarize([report(0, 1.0, 0.5), report(1, 2.0, 1.4), report(2, 3.0, 2.6), {"nvlabs": None, "quality": None}])
    assert out["seeds"] == 3
    assert out["trainers"]["nvlabs"]["fd"][0] == pytest.approx(2.0)
    assert out["trainers"]["ours"]["kimg_per_s"][0] == pytest.approx(0.5)
    fd = out["ours_minus_nvlabs"]["fd"]
    assert fd["per_seed"] == pytest.approx([-0.5, -0.6, -0.4])
    assert fd["mean"] == pytest.approx(-0.5)
    assert fd["ci95"] == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3)  # sd 0.1 over 3 seeds
    assert fd["exceeds_interval"]
    assert not out["ours_minus_nvlabs"]["precision"]["exceeds_interval"]  # equal in every seed: no difference
    with pytest.raises(ValueError, match="both trainers"):
        summarize([{"nvlabs": None, "quality": None}])


def test_a_call_after_one_that_ran_out_of_time_keeps_what_finished(tmp_path):
    """NVlabs' run with its last snapshot and our exported run are read back, not trained again."""
    run = tmp_path / "work" / "nvlabs" / "00000-images-auto1"
    run.mkdir(parents=True)
    (run / "log.txt").write_text('Setting up PyTorch plugin "upfirdn2d_plugin"... Done.\n')
    ticks = [{"Progress/tick": {"mean": t}, "Timing/sec_per_kimg": {"mean": s}} for t, s in ((0, 9.0), (1, 3.0))]
    (run / "stats.jsonl").write_text("\n".join(json.dumps(t) for t in ticks))
    (run / "network-snapshot-000002.pkl").write_bytes(b"")
    args = argparse.Namespace(work=str(tmp_path / "work"), nvlabs=str(tmp_path / "absent"), kimg=2, seed=0,
                              channels=None, device="cuda")  # fmt: skip
    kept = run_nvlabs(args, tmp_path / "images", auto_settings(64, 32))  # no train.py there: not run again
    assert kept["plugins"] == {"upfirdn2d_plugin": "cuda"} and kept["kimg_per_s"] == pytest.approx(1 / 3)

    ours = tmp_path / "work" / "ours"
    (ours / "models").mkdir(parents=True)
    (ours / "models" / "G.pt").write_bytes(b"")
    rows = [{"step": 19, "window": 1, "steps_per_s": 0.1, "data_wait_fraction": 0.0},
            {"step": 39, "window": 2, "steps_per_s": 10.0, "data_wait_fraction": 0.0}]  # fmt: skip
    (ours / "train_log.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    report = stylegan2_peer.run_ours(argparse.Namespace(**vars(args), set=[], checkpoint_every=0),
                                     auto_settings(64, 32))  # fmt: skip
    assert report["steps"] == 40 and report["kimg_per_s"] == pytest.approx(10.0 * 32 / 1e3)


def test_each_process_first_window_is_left_out_of_the_timing():
    """A resumed run's log holds a second start-up window; the first fifth of all windows goes too."""
    rows = [{"window": w, "steps_per_s": v} for w, v in [(1, 0.1), (2, 5.0), (3, 5.0), (1, 0.2), (2, 6.0)]]
    assert [r["steps_per_s"] for r in stylegan2_peer.steady_windows(rows)] == [5.0, 5.0, 6.0]
    assert stylegan2_peer.steady_windows([{"steps_per_s": 1.0}]) == [{"steps_per_s": 1.0}]  # logs without windows


def test_together_trains_both_at_once_and_says_so(tmp_path, monkeypatch):
    both_running = threading.Barrier(2, timeout=20)  # broken if the second starts after the first ends

    def trainer(name):
        def run(*_):
            both_running.wait()
            return {"kimg_per_s": 1.0, "snapshot": None, "run_dir": name}

        return run

    monkeypatch.setattr(stylegan2_peer, "make_data", lambda *_: tmp_path / "images")
    monkeypatch.setattr(stylegan2_peer, "run_nvlabs", trainer("nvlabs"))
    monkeypatch.setattr(stylegan2_peer, "run_ours", trainer("ours"))
    argv = ["stylegan2_peer", "--nvlabs", "checkout", "--together", "--no-score", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "peer.json")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    stylegan2_peer.main()
    assert json.loads((tmp_path / "peer.json").read_text())["trained_together"] is True
