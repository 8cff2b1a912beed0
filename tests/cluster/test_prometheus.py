"""A real Prometheus server scrapes a short local `renderloop run` and sees its series move; the
shipped Grafana dashboard and scrape config only name metrics that renderloop exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from renderloop.cluster.prometheus import PrometheusServer, dashboard_path, find_prometheus, scrape_config
from renderloop.metrics import METRICS
from renderloop.ports import free_port


def _prometheus() -> str | None:
    found = find_prometheus()
    if found:
        return found
    unpacked = Path(os.environ.get("RENDERLOOP_TEST_DATA", "/nonexistent")) / "usr" / "bin" / "prometheus"
    return str(unpacked) if unpacked.is_file() else None


def _exported_names() -> set[str]:
    names = set()
    for name, m in METRICS.items():
        names.add(name)
        if m.kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_dashboard_and_scrape_config_name_only_exported_metrics():
    dashboard = json.loads(dashboard_path().read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"renderloop_[a-z_]+", e)}
    assert used and used <= _exported_names()
    wanted = ("samples_generated", "trainer_samples", "backlog", "step_seconds", "data_wait", "loss", "gpu_memory",
              "producer_restarts")  # fmt: skip
    assert all(any(w in m for m in used) for w in wanted)
    assert "file_sd_configs" in (dashboard_path().parent / "prometheus.yml").read_text()


@pytest.mark.skipif(_prometheus() is None, reason="needs a prometheus binary (.ci/run unpacks Debian's)")
def test_real_prometheus_sees_throughput_and_step_time_move(tmp_path):
    port = free_port()
    run = subprocess.Popen(
        [sys.executable, "-m", "renderloop.cli", "run", "method=simgan_debug", "engine=debug", "device=cpu",
         f"storage.root={tmp_path / 'data'}", f"run_dir={tmp_path / 'run'}", "samples_per_shard=8",
         "engine.max_steps=100000", "engine.checkpoint_every=0", f"metrics_port={port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = scrape_config([f"127.0.0.1:{port}"], interval="1s")
    try:
        with PrometheusServer(_prometheus(), config, tmp_path / "prom", free_port()) as prom:
            seen: list[float] = []
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(set(seen)) < 3:
                assert run.poll() is None, "the run stopped early"
                result = prom.query('sum(renderloop_trainer_samples_total{method="simgan"})')
                if result:
                    seen.append(float(result[0]["value"][1]))
                time.sleep(1)
            assert len(set(seen)) >= 3 and seen == sorted(seen), seen  # trained samples grow
            assert prom.query("sum(rate(renderloop_trainer_step_seconds_count[10s])) > 0")
            assert prom.query("renderloop_trainer_step_seconds_sum")
            assert prom.query("sum(renderloop_samples_generated_total) > 0")
            assert prom.query("renderloop_backlog_shards")
            assert prom.query('renderloop_loss{phase="D_main",term="loss"}')
    finally:
        run.terminate()
        run.wait(timeout=30)
