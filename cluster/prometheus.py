"""A local Prometheus server for a local run, and the scrape configs that feed it.

``renderloop dashboard`` writes a config that scrapes the run's endpoints (``127.0.0.1:PORT`` of
each rank and of the producers) and, on a Ray cluster, every node's metrics agent through Ray's
service-discovery file; then it starts Debian's (or any) ``prometheus`` binary on 127.0.0.1.
The Grafana dashboard that reads these series ships as ``cluster/dashboards/grafana.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RAY_SERVICE_DISCOVERY",
    "DashboardConfig",
    "PrometheusServer",
    "dashboard_path",
    "find_prometheus",
    "scrape_config",
    "serve_dashboard",
]

RAY_SERVICE_DISCOVERY = "/tmp/ray/prom_metrics_service_discovery.json"
"""Where a Ray head writes the metrics-agent targets of every node (Ray's default temp dir)."""


def dashboard_path() -> Path:
    """The Grafana dashboard JSON shipped with the package."""
    return Path(__file__).with_name("dashboards") / "grafana.json"


def find_prometheus() -> str | None:
    """``$RENDERLOOP_PROMETHEUS``, else ``prometheus`` on ``PATH``, else None."""
    explicit = os.environ.get("RENDERLOOP_PROMETHEUS")
    return explicit if explicit and Path(explicit).is_file() else shutil.which("prometheus")


def scrape_config(targets: list[str], *, interval: str = "5s", ray_service_discovery: str | None = None) -> str:
    """Prometheus YAML scraping ``targets`` (host:port) and, optionally, Ray's discovered agents."""
    lines = [
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "scrape_configs:",
    ]
    if targets:
        lines += [
            "  - job_name: renderloop",
            "    static_configs:",
            f"      - targets: {json.dumps(list(targets))}",
        ]
    if ray_service_discovery:
        lines += [
            "  - job_name: ray",
            "    file_sd_configs:",
            f"      - files: [{json.dumps(ray_service_discovery)}]",
        ]
    return "\n".join(lines) + "\n"


class PrometheusServer:
    """``prometheus`` as a child process listening on 127.0.0.1 only."""

    def __init__(self, binary: str, config: str, data_dir: str | Path, port: int) -> None:
        self.binary, self.port = binary, port
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.data_dir / "prometheus.yml"
        self.config_path.write_text(config)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        log = open(self.data_dir / "prometheus.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {self.process.returncode}; see {self.data_dir}/prometheus.log"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"prometheus did not become ready on {self.url} within {timeout:.0f} s")

    def query(self, expr: str) -> list[dict]:
        """Instant query through the HTTP API: the result vector (``metric`` labels + ``value``)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus query {expr!r} failed: {body}")
        return body["data"]["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class DashboardConfig:
    """``renderloop dashboard``: a local Prometheus for a local run (``conf/dashboard.yaml``)."""

    port: int = 9090
    targets: list[str] = field(default_factory=lambda: ["127.0.0.1:9400"])
    """``host:port`` endpoints to scrape: a run's ``metrics_port`` (+ rank, + producers)."""
    ray: bool = False
    """Also scrape the agents a Ray head on this machine lists in its service-discovery file."""
    scrape_interval: str = "5s"
    data_dir: str = "runs/prometheus"

    def __post_init__(self) -> None:
        from renderloop.config import ConfigError

        if not 0 < self.port < 65536:
            raise ConfigError("port", f"must be a TCP port; got {self.port}")
        if not self.targets and not self.ray:
            raise ConfigError("targets", "name at least one host:port, or set ray=true")


def serve_dashboard(cfg: DashboardConfig) -> None:
    """Run Prometheus on 127.0.0.1 until interrupted."""
    from renderloop.config import ConfigError

    binary = find_prometheus()
    if binary is None:
        raise ConfigError(
            "dashboard",
            "no prometheus binary: install one (Debian: apt install prometheus) or set RENDERLOOP_PROMETHEUS",
        )
    config = scrape_config(
        cfg.targets, interval=cfg.scrape_interval, ray_service_discovery=RAY_SERVICE_DISCOVERY if cfg.ray else None
    )
    with PrometheusServer(binary, config, cfg.data_dir, cfg.port) as server:
        print(f"prometheus on {server.url} scraping {', '.join(cfg.targets) or 'Ray agents'}")
        print(f"Grafana: add {server.url} as a Prometheus data source and import {dashboard_path()}")
        try:
            while server.process is not None and server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
