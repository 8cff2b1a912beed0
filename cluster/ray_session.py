"""What every Ray process of a run shares: the connection to the cluster and Ray's metrics agent."""

from __future__ import annotations

from renderloop.metrics import METRICS, MetricsSink

__all__ = ["connect", "RaySink"]


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: ``RAY_ADDRESS`` or a new local Ray); a second
    call in one process is a no-op."""
    import ray

    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)


class RaySink(MetricsSink):
    """Metrics through Ray's metrics agent (``ray.util.metrics``), scraped with the cluster's.

    ``default_labels`` (e.g. ``method``, ``role``, ``rank``) are added to every series of this
    process, so one Prometheus query can tell producers from trainer ranks across the cluster.
    """

    def __init__(self, **default_labels: str) -> None:
        from ray.util import metrics as rm

        kinds = {"counter": rm.Counter, "gauge": rm.Gauge, "histogram": rm.Histogram}
        self._metrics = {}
        for name, m in METRICS.items():
            kw = {"boundaries": [0.001, 0.01, 0.1, 1.0, 10.0]} if m.kind == "histogram" else {}
            keys = tuple(dict.fromkeys((*m.labels, *default_labels)))
            metric = kinds[m.kind](name, description=m.help, tag_keys=keys, **kw)
            metric.set_default_tags({k: str(v) for k, v in default_labels.items()})
            self._metrics[name] = metric
        self.default_labels = default_labels

    def inc(self, name, value=1.0, **labels):
        self._metrics[name].inc(value, tags=labels)

    def set(self, name, value, **labels):
        self._metrics[name].set(value, tags=labels)

    def observe(self, name, value, **labels):
        self._metrics[name].observe(value, tags=labels)
