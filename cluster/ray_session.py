"""What every Ray process of a run shares: the connection to the cluster and Ray's metrics agent."""

from __future__ import annotations

from renderloop.config import ConfigError
from renderloop.metrics import METRICS, MetricsSink

__all__ = ["connect", "require_resources", "RaySink"]


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: ``RAY_ADDRESS`` or a new local Ray); a second
    call in one process is a no-op."""
    import ray

    try:
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False)
    except ConnectionError as err:
        raise ConfigError("cluster.address", f"no Ray cluster answers there ({err}); got {address!r}") from None


def require_resources(each: dict[str, tuple[str, float]]) -> None:
    """Refuse, before anything is placed, a task that no node of the connected cluster could hold:
    ``each`` maps a resource (``CPU``, ``GPU``) to the config key that asks for it and the amount
    one actor or worker needs. Ray would otherwise wait for ever to place it."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for resource, (key, amount) in each.items():
        largest = max((node.get(resource, 0.0) for node in nodes), default=0.0)
        if amount > largest:
            raise ConfigError(
                key,
                f"asks for {amount:g} {resource} per actor or worker; the largest node of the Ray cluster "
                f"has {largest:g} (lower it, or add nodes that have them); got {amount:g}",
            )


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
        if value:  # Ray's counters refuse 0 (a step of a method that reads no stream samples adds none)
            self._metrics[name].inc(value, tags=labels)

    def set(self, name, value, **labels):
        self._metrics[name].set(value, tags=labels)

    def observe(self, name, value, **labels):
        self._metrics[name].observe(value, tags=labels)
