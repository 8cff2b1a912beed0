"""bench.aign's producer layout on a GPU: cores per run, the streams' split, where sources run."""

from argparse import Namespace

from bench.aign import _producers


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
