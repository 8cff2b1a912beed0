"""Each bad cluster or engine value is refused under its own dotted key, with the value shown."""

from __future__ import annotations

import math
import os
import re

import pytest

from renderloop.cluster.config import ClusterConfig
from renderloop.config import ConfigError, to_schema
from renderloop.trainers.config import DataConfig, EngineConfig

CLUSTER_CASES = [
    ("num_gpus_per_producer", -0.5),
    ("num_gpus_per_producer", math.nan),
    ("num_gpus_per_producer", math.inf),
    ("num_cpus_per_producer", -1.0),
    ("num_cpus_per_producer", math.nan),
    ("num_cpus_per_producer", math.inf),
    ("max_restarts", -1),
    ("workers", 0),
    ("cpus_per_worker", -1.0),
    ("cpus_per_worker", math.nan),
    ("cpus_per_worker", math.inf),
    ("gpus_per_worker", -0.25),
    ("gpus_per_worker", math.nan),
    ("gpus_per_worker", math.inf),
    ("nnodes", 0),
]


def _refused(build, key: str, value) -> None:
    with pytest.raises(ConfigError, match=rf"^config error at {re.escape(key)}:") as err:
        build()
    assert err.value.key == key
    assert str(err.value).endswith(f"got {value}")


@pytest.mark.parametrize("field, value", CLUSTER_CASES)
def test_cluster_value_names_its_key(field, value):
    _refused(lambda: ClusterConfig(**{field: value}), f"cluster.{field}", value)


@pytest.mark.parametrize("field, value", [("max_restarts", -3), ("cpus_per_worker", -2.0)])
def test_cluster_value_names_its_key_through_the_schema(field, value):
    _refused(lambda: to_schema(ClusterConfig, {field: value}, "cluster"), f"cluster.{field}", value)


def test_several_nodes_need_a_rendezvous_endpoint():
    _refused(lambda: ClusterConfig(mode="torchrun", nnodes=2), "cluster.rdzv_endpoint", None)
    ClusterConfig(mode="torchrun", nnodes=2, rdzv_endpoint="host:29400")


@pytest.mark.parametrize("field, value", [("num_workers", -1), ("shuffle_buffer", -8), ("batch_size", 0)])
def test_engine_data_value_names_its_key(field, value):
    _refused(lambda: DataConfig(**{field: value}), f"engine.data.{field}", value)
    _refused(lambda: to_schema(EngineConfig, {"data": {field: value}}, "engine"), f"engine.data.{field}", value)


def test_zero_resources_are_accepted():
    ClusterConfig(num_cpus_per_producer=0.0, num_gpus_per_producer=0.0, max_restarts=0, cpus_per_worker=0.0)
    DataConfig(num_workers=0, shuffle_buffer=0)


@pytest.mark.parametrize(
    "field, value",
    [("idle_timeout", 0.0), ("idle_timeout", -5.0), ("idle_timeout", math.nan), ("idle_timeout", math.inf)],
)
def test_engine_data_float_names_its_key(field, value):
    _refused(lambda: DataConfig(**{field: value}), f"engine.data.{field}", value)


@pytest.mark.parametrize(
    "field, value",
    [(key, bad) for key in ("max_minutes", "grad_clip", "ema_half_life") for bad in (-1.0, math.nan, math.inf)],
)
def test_engine_float_names_its_key(field, value):
    _refused(lambda: EngineConfig(**{field: value}), f"engine.{field}", value)


def test_an_open_stream_is_waited_for_a_bounded_time_by_default():
    assert 0 < DataConfig().idle_timeout < math.inf
    assert DataConfig(idle_timeout=None).idle_timeout is None  # waiting for ever stays possible


@pytest.mark.parametrize("command", ["train", "generate"])
@pytest.mark.parametrize("port", [99999, -2])
def test_a_metrics_port_outside_the_tcp_range_is_refused(command, port, capsys):
    from renderloop.cli import main

    assert main([command, f"metrics_port={port}"]) == 2
    assert capsys.readouterr().err.startswith(f"renderloop {command}: config error at metrics_port:")


def test_generate_refuses_an_unknown_device(capsys):
    from renderloop.cli import main

    assert main(["generate", "device=tpu"]) == 2
    assert "config error at device" in capsys.readouterr().err


def test_a_run_dir_that_is_a_file_or_cannot_be_written_is_refused(tmp_path, capsys):
    from renderloop.cli import main

    afile = tmp_path / "afile"
    afile.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for run_dir in (afile, afile / "run", locked / "run"):
        if run_dir.parent == locked and os.access(locked, os.W_OK):  # root writes anywhere
            continue
        assert main(["train", "method=simgan_debug", f"run_dir={run_dir}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config error at run_dir" in err[0]
        assert not (run_dir.exists() and run_dir.is_dir())
