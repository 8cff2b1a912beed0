"""method=datasetgan and source=datasetgan: the oracle annotates exactly K samples once per job (a
resumed run asks nothing again; of two ranks, rank 0 asks and the other receives its labels), the
interpreter trains with held-out selection, and the source labels new samples, dropping each
pool's most uncertain share."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from renderloop.cluster.launch import TrainConfig, train
from renderloop.config import ConfigError, load_config
from renderloop.datasets.datasetgan import DatasetGANSource, DatasetGANSourceConfig
from renderloop.datasets.schema import decode_sample, encode_sample
from renderloop.models.stylegan2.io import load_generator
from renderloop.trainers.datasetgan import DatasetGAN, DatasetGANConfig

from .helpers import evaluate, gan_method_assets, make_streams


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return gan_method_assets(tmp_path_factory.mktemp("datasetgan"))


def _config(tmp_path, assets, *overrides: str) -> TrainConfig:
    return load_config(
        "train",
        ["method=datasetgan_debug", "engine=debug", f"method.generator={assets['checkpoint']}",
         f"method.oracle_run={assets['oracle']}", f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}",
         "device=cpu", "engine.checkpoint_every=3", *overrides],
        TrainConfig,
    )  # fmt: skip


def test_annotations_once_training_resume_and_the_labelled_source(tmp_path, assets, monkeypatch):
    asked = []
    segment = __import__("renderloop.trainers.oracle", fromlist=["Oracle"]).Oracle.segment

    def counted(self, images):
        asked.append(len(images))
        return segment(self, images)

    monkeypatch.setattr("renderloop.trainers.oracle.Oracle.segment", counted)
    train(_config(tmp_path, assets, "engine.max_steps=3"), [], command="train")
    assert asked == [4]  # K = 4 annotations, in one call
    train(_config(tmp_path, assets, "engine.max_steps=6"), [], command="train")  # resumes at step 3
    assert asked == [4]  # the annotations came back from the checkpoint
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(6))
    accuracy = [r["loss/interpreter/validation_accuracy"] for r in rows if "loss/interpreter/validation_accuracy" in r]
    assert len(accuracy) == 3 and all(0 <= a <= 1 for a in accuracy)  # every 2 updates, across the resume
    assert [r["loss/interpreter/oracle_calls"] for r in rows] == [4] * 6  # the job's annotations, logged

    report = evaluate(_config(tmp_path, assets))
    assert report["annotations"] == 4 and report["oracle_calls"] == 4  # the annotation budget
    assert asked == [4, 6] and report["fresh_oracle_calls"] == 6  # then six new samples, counted apart
    assert 0 <= report["fresh_miou"] <= 1 and 0 <= report["fresh_pixel_accuracy"] <= 1
    assert 0 <= report["ensemble_validation_accuracy"] <= 1 and report["validation_pixels"] > 0
    saved = json.loads((tmp_path / "run" / "eval" / "datasetgan_eval.json").read_text())
    assert len(saved["member_validation_accuracy"]) == 3 and (tmp_path / "run" / "eval" / "annotations.png").exists()
    assert (tmp_path / "run" / "eval" / "generated.png").exists()  # kept and filtered samples

    config = DatasetGANSourceConfig(checkpoint=assets["checkpoint"], interpreter=str(tmp_path / "run" / "eval" /
                                    "interpreter.pt"), batch_size=9, drop_share=0.25)  # fmt: skip
    source = DatasetGANSource(config)
    batch = source.generate(0, 0)
    assert batch["rgb"].shape == (9, 3, 16, 16) and batch["seg"].shape == (9, 16, 16)
    assert int(batch["seg"].max()) <= 10 and torch.equal(batch["seg"], source.generate(0, 0)["seg"])
    # A pool of ceil(9 / 0.75) = 12 draws keeps its 9 least uncertain, in draw order.
    assert batch["pool_index"].tolist() == sorted(batch["pool_index"].tolist()) and batch["pool_index"].max() < 12
    everything = DatasetGANSource(DatasetGANSourceConfig(**{**config.__dict__, "batch_size": 12, "drop_share": 0.0}))
    pool = everything.generate(0, 0)
    assert torch.equal(pool["rgb"][batch["pool_index"]], batch["rgb"])
    dropped = sorted(set(range(12)) - set(batch["pool_index"].tolist()))
    assert pool["uncertainty"][dropped].min() >= batch["uncertainty"].max()
    sample = decode_sample(encode_sample(source.to_samples(batch, [0] * 9, [f"k{i}" for i in range(9)])[2]))
    assert sample["seg.png"].shape == (16, 16) and sample["meta.json"]["uncertainty"] >= 0
    single = DatasetGANSource(DatasetGANSourceConfig(**{**config.__dict__, "members": 1, "drop_share": 0.0}))
    assert single.ensemble.members == 1
    with pytest.raises(ConfigError, match="source.drop_share"):  # one member: no disagreement to filter by
        DatasetGANSourceConfig(**{**config.__dict__, "members": 1})
    # Labels do not depend on how images are grouped: one at a time (100 pixels) against all 12 at once.
    split = DatasetGANSource(DatasetGANSourceConfig(**{**config.__dict__, "pixel_chunk": 100})).generate(0, 0)
    assert torch.equal(split["seg"], batch["seg"]) and torch.equal(split["pool_index"], batch["pool_index"])
    assert torch.allclose(split["uncertainty"], batch["uncertainty"], rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError, match="source.members"):
        DatasetGANSource(DatasetGANSourceConfig(**{**config.__dict__, "members": 4}))
    with pytest.raises(ConfigError, match="source.truncation_psi.*trained on samples drawn with truncation_psi=0.7"):
        DatasetGANSource(DatasetGANSourceConfig(**{**config.__dict__, "truncation_psi": 1.0}))

    # The downstream segmenter learns from that stream like from any other.
    interpreter = config.interpreter
    downstream = load_config("train", [
        "method=part_segmentation", "method.width=8", "method.levels=2", "engine=debug", "device=cpu",
        f"method.data.labeled.checkpoint={assets['checkpoint']}", f"method.data.labeled.interpreter={interpreter}",
        "method.data.labeled.batch_size=4", f"storage.root={tmp_path / 'seg-data'}", f"run_dir={tmp_path / 'seg'}",
        "samples_per_shard=4", "engine.max_steps=2"], TrainConfig)  # fmt: skip
    make_streams(downstream, samples=8)
    assert train(downstream, [], command="train")["step"] == 1


def test_bad_datasetgan_configs_are_refused(tmp_path, assets):
    with pytest.raises(ConfigError, match="method.annotations"):
        _config(tmp_path, assets, "method.annotations=0")
    with pytest.raises(ConfigError, match="method.holdout"):
        _config(tmp_path, assets, "method.holdout=1.0")
    with pytest.raises(ConfigError, match="source.interpreter"):
        DatasetGANSource(DatasetGANSourceConfig(checkpoint=assets["checkpoint"], interpreter=assets["checkpoint"]))
    assert DatasetGAN.name == "datasetgan"


def _annotating_rank(rank: int, store: str, assets: dict[str, str], out: str) -> None:
    """One of two gloo ranks: annotate, recording this rank's oracle calls, then fail with a missing oracle."""
    from renderloop.trainers.oracle import Oracle

    asked: list[int] = []
    segment = Oracle.segment

    def counted(self, images):
        asked.append(len(images))
        return segment(self, images)

    Oracle.segment = counted
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2)
    try:
        G = load_generator(assets["checkpoint"]).requires_grad_(False)
        method = DatasetGAN(DatasetGANConfig(generator=assets["checkpoint"], oracle_run=assets["oracle"],
                                             annotations=4), torch.device("cpu"))  # fmt: skip
        method._annotate(G)
        missing = DatasetGAN(DatasetGANConfig(generator=assets["checkpoint"], oracle_run=f"{out}-no-oracle",
                                              annotations=4), torch.device("cpu"))  # fmt: skip
        error = None
        try:
            missing._annotate(G)
        except Exception as err:  # noqa: BLE001 - reported to the test
            error = type(err).__name__
        torch.save({"asked": asked, "annotated": method.annotated, "error": error}, f"{out}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_ask_the_oracle_k_times_in_all_and_share_its_labels(tmp_path, assets):
    out = str(tmp_path / "rank")
    mp.spawn(_annotating_rank, args=(str(tmp_path / "store"), assets, out), nprocs=2)
    first, second = (torch.load(f"{out}{r}.pt", weights_only=True) for r in (0, 1))
    assert first["asked"] == [4] and second["asked"] == []  # one annotator: K images in the whole job
    for key in ("ws", "labels", "holdout", "calls"):
        assert torch.equal(first["annotated"][key], second["annotated"][key]), key
    assert int(second["annotated"]["calls"]) == 4
    assert first["error"] and second["error"] == "RuntimeError"  # rank 0's failure stops rank 1 too, not a hang
