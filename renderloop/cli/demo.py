"""``renderloop demo`` (``make demo``): SimGAN's digit experiment, end to end.

Producers print digits from fonts and serve unlabeled handwritten ones while SimGAN trains on
them (``renderloop run``); then ``renderloop eval`` trains digit classifiers on synthetic,
refined and real digits and tests them on held-out handwriting. Sizes in ``conf/demo.yaml``
keep it to minutes on a CPU.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from renderloop.cluster.launch import TrainConfig, run
from renderloop.cluster.torchrun import in_torchrun_worker
from renderloop.datasets.storage import Storage
from renderloop.trainers.evaluation import evaluate_run

__all__ = ["DemoConfig", "demo"]


@dataclass
class DemoConfig(TrainConfig):
    fresh: bool = True
    """Start from nothing: delete the demo's run folder and streams first."""


def demo(cfg: DemoConfig, overrides: list[str]) -> dict[str, float]:
    if in_torchrun_worker():  # a child of `renderloop demo cluster=torchrun`: train only
        return run(cfg, overrides, command="demo")
    if cfg.fresh:
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        storage = Storage(cfg.storage.root)
        for role in cfg.streams():
            if storage.exists(cfg.stream(role)):
                storage.fs.rm(storage.path(cfg.stream(role)), recursive=True)
    run(cfg, overrides, command="demo")
    results = evaluate_run(cfg.method_name, cfg.method_config, cfg.run_dir, cfg.device)
    results["figure"] = str(Path(cfg.run_dir) / "eval" / "simgan_eval.png")
    if "gap_closed" in results:
        results["summary"] = (
            f"refinement closed {results['gap_closed']:+.2f} ± {results['gap_closed_ci95']:.2f} of the gap "
            f"(95% interval over {results['classifier_seeds']} classifier seeds of one SimGAN run; "
            f"test error synthetic {results['synthetic_error']:.3f}, refined {results['refined_error']:.3f}, "
            f"real {results['real_error']:.3f})"
        )
    return results
