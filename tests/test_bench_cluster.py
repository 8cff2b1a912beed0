"""bench.cluster and bench.scaling: each method's streams and producers, the job's overrides, and
the report of a restart after a killed worker (from a run folder and ledgers made here)."""

import json

import pytest

from bench import cluster, scaling
from renderloop.datasets.ledger import Ledger
from renderloop.datasets.storage import Storage
from tests.datasets.helpers import tiny_producer


def test_each_method_names_its_own_streams_and_producers():
    assert cluster.method_streams("simgan") == ("simgan", ("synthetic", "real"))
    assert cluster.method_streams("aign/sfm") == ("aign", ("input", "memory"))
    assert scaling._producers("simgan", 2, "") == "synthetic=6,real=2"
    assert scaling._producers("aign/sfm", 1, "memory=3") == "input=1,memory=3"
    with pytest.raises(SystemExit, match="no role 'real'"):
        cluster._producer_counts(cluster.parser().parse_args(["--producers-by-role", "real=2"]), ("input", "memory"))


def test_a_two_gpu_row_splits_the_gpus_and_carries_its_settings():
    options = scaling.parser().parse_args(["--gpus", "2", "--set", "engine.precision=bf16"])
    args = scaling.job_args(options, method="aign/sfm", zero=2, devices=2)
    counts = cluster._producer_counts(args, ("input", "memory"))
    entry = cluster._entrypoint(args, counts, root="R", run_dir="D")
    assert {"method=aign/sfm", "engine.zero_stage=2", "cluster.workers=2", "cluster.gpus_per_worker=0.5000",
            "cluster.num_gpus_per_producer=0.2500", "device=cuda", "engine.precision=bf16"} <= set(entry)  # fmt: skip
    assert "cluster.producers_by_role={input:2,memory:2}" in entry
    assert not any("pretrain" in a or "read_receipts" in a for a in entry)  # SimGAN's and --kill-worker's only
    killed = cluster.parser().parse_args(["--kill-worker", "--trainer-batch", "256"])
    entry = cluster._entrypoint(killed, {"synthetic": 1, "real": 1}, root="R", run_dir="D")
    assert {"engine.data.read_receipts=true", "cluster.max_failures=1", "engine.data.batch_size=256",
            "method.data.real.batch_size=16", "device=cpu"} <= set(entry)  # fmt: skip


def test_a_restart_report_finds_the_step_it_went_back_to_and_double_reads(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    kept = [{"step": s, "loss/R_main/loss": 1.0 - 0.01 * s, "loss/R_main/accuracy": 0.5} for s in range(30)]
    redone = [{"step": s, "loss/R_main/loss": 9.0} for s in (20, 21, 22)]
    (run_dir / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    (run_dir / "train_log.replaced.jsonl").write_text("".join(json.dumps(r) + "\n" for r in redone))
    tiny_producer(str(tmp_path)).run(16)  # two shards of stream "s"
    ledger = Ledger(Storage(str(tmp_path)), "s")
    first, second = (e.shard for e in ledger.entries())
    for shard, epoch in ((first, 0), (second, 0), (second, 0), (first, 1)):
        ledger.record_read(shard, epoch, "reader-r0-w0")

    report = cluster.restart_report(run_dir, {"real": ledger}, {"pid": 1, "t": 5.0, "last_step": 22})
    assert report["resumed_from_step"] == 20 and report["steps_redone"] == 3 and report["every_step_logged_once"]
    assert report["loss_before_checkpoint"] == {"loss/R_main/loss": pytest.approx(1.0 - 0.01 * 14.5)}
    assert report["loss_after_restart"] == {"loss/R_main/loss": pytest.approx(1.0 - 0.01 * 24.5)}
    assert report["shards_published"] == {"real": 2} and report["shards_read"] == {"real": 3}
    assert report["shards_read_twice"] == {"real": [second]}
