"""The GAN methods launched on several processes: under ``cluster=torchrun`` two gloo processes
train each one from its streams, checkpoint both ranks, log every step once and export the weights
its evaluation loads; under ``cluster=ray`` two Ray Train workers do the same for DatasetGAN, whose
annotations rank 0 alone asks the oracle for, and for GANverse3D."""

from __future__ import annotations

import json

import pytest

from renderloop.cli import main
from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import load_config
from renderloop.models.stylegan2.io import load_generator
from renderloop.trainers.oracle import Oracle
from renderloop.trainers.view_codes import annotate, save_annotation

from .helpers import gan_method_assets, make_streams


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan-methods")
    found = gan_method_assets(root)
    G, oracle = load_generator(found["checkpoint"]), Oracle.load(found["oracle"], "cpu")
    codes, report = annotate(G, oracle, k=4, candidates=6, samples_per_code=2, max_spread_deg=360.0,
                             require_object=False)  # fmt: skip
    found["codes"], found["labels"] = map(str, save_annotation(codes, report, root / "annotation"))
    return found


def _method(name: str, assets: dict[str, str]) -> tuple[list[str], str]:
    """A method's debug overrides and the weights file its run exports."""
    oracle = f"method.oracle_run={assets['oracle']}"
    if name == "datasetgan":
        return ["method=datasetgan_debug", f"method.generator={assets['checkpoint']}", oracle], "interpreter.pt"
    if name == "gan2shape":
        return ["method=gan2shape_debug", f"method.data.images.checkpoint={assets['checkpoint']}", oracle], "net.pt"
    views = [f"method.data.views.checkpoint={assets['checkpoint']}", f"method.data.views.view_codes={assets['codes']}"]
    return ["method=ganverse3d_debug", *views, oracle, f"method.view_labels={assets['labels']}"], "model.pt"


@pytest.mark.parametrize("name", ["datasetgan", "gan2shape", "ganverse3d"])
def test_two_gloo_processes_train_each_gan_method(tmp_path, assets, name):
    method, weights = _method(name, assets)
    args = [*method, "engine=debug", "device=cpu", "samples_per_shard=4", f"storage.root={tmp_path / 'data'}",
            f"run_dir={tmp_path / 'run'}", "engine.max_steps=3"]  # fmt: skip
    make_streams(load_config("train", args, TrainConfig), samples=16)
    assert main(["train", *args, "cluster=torchrun", "cluster.workers=2"]) == 0
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    clients = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / latest).glob("client-rank*.pt"))
    assert clients == ["client-rank0.pt", "client-rank1.pt"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert (tmp_path / "run" / "models" / weights).exists()


@pytest.mark.parametrize("name", ["datasetgan", "ganverse3d"])
def test_two_ray_train_workers_train_a_gan_method(tmp_path, assets, name):
    import ray

    method, weights = _method(name, assets)
    args = [*method, "engine=debug", "device=cpu", "samples_per_shard=4", f"storage.root={tmp_path / 'data'}",
            f"run_dir={tmp_path / 'run'}", "engine.max_steps=3", "cluster=ray", "cluster.workers=2",
            "cluster.cpus_per_worker=0.5"]  # fmt: skip
    cfg = load_config("train", args, TrainConfig)
    make_streams(cfg, samples=16)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        assert train(cfg, [], command="train")["checkpoint_step"] == 3
    finally:
        ray.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    if name == "datasetgan":  # K = 4 in the whole job, not per worker
        assert [r["loss/interpreter/oracle_calls"] for r in rows] == [4] * 3
    assert (tmp_path / "run" / "models" / weights).exists()
