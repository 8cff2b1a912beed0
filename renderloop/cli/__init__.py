"""The ``renderloop`` command: ``renderloop <command> [key=value ...]`` (Hydra overrides).

The top floor: each handler loads its config, hands it to the package that does the work and
prints the outcome. Nothing below imports from here.

A problem with what the user gave (``ConfigError``: a config value; ``InputError``: a file, path or
device) is one line on stderr and exit status 2, found before heavy work where it can be; other
``RenderloopError``s (storage refused writes, producers failed) exit with 1; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from renderloop.config import ConfigError, load_config, to_schema
from renderloop.errors import InputError, RenderloopError

COMMANDS = {
    "info": "print versions, devices, renderer backends and the compile cache location",
    "demo": "the embedded SimGAN digit experiment: train on live streams, then evaluate the gap closed",
    "generate": "run a source (simulator, image folder) into a stream of WebDataset shards",
    "inspect": "summarize a stream under ROOT and write a contact sheet of samples with labels",
    "export": "write a stream as plain per-sample WebDataset tars (PNG, NPY, JSON) for other tools",
    "train": "train a method (method=simgan ...) on streams that exist",
    "run": "start producers for a method's streams and train while they publish",
    "eval": "evaluate the models a run exported (method=... run_dir=...)",
    "turntable": "render a turntable of a mesh with renderloop's renderers and write a PNG sheet",
    "dashboard": "start a local Prometheus on 127.0.0.1 that scrapes a local run (targets=[...])",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renderloop",
        description="Train inverse-graphics and sim-to-real methods on synthetic data made while training runs.",
        epilog="Settings are Hydra overrides, e.g.: renderloop run method=simgan engine.max_steps=100 cluster=ray",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "inspect":
            cmd.add_argument("root", metavar="ROOT", help="storage root (path or fsspec URL)")
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra config overrides")
    return parser


def _info(overrides: list[str]) -> None:
    from renderloop.renderers.renderer import RendererConfig

    from .info import collect, format_report

    cfg = load_config("info", overrides)
    renderer = to_schema(RendererConfig, cfg.renderer, "renderer")
    print(format_report(collect(renderer)))


def _turntable(overrides: list[str]) -> None:
    from renderloop.renderers.turntable import TurntableConfig, run

    cfg = load_config("turntable", overrides, TurntableConfig)
    print(f"wrote {run(cfg)}")


def _train(overrides: list[str]) -> None:
    from renderloop.cluster.launch import TrainConfig, train

    _print_summary(train(load_config("train", overrides, TrainConfig), overrides))


def _run(overrides: list[str]) -> None:
    from renderloop.cluster.launch import TrainConfig, run

    _print_summary(run(load_config("run", overrides, TrainConfig), overrides))


def _print_summary(summary: dict) -> None:
    if summary:
        shown = {k: v for k, v in summary.items() if k in ("step", "samples_per_s", "data_wait_fraction")}
        print("done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


def _eval(overrides: list[str]) -> None:
    from renderloop.cluster.launch import TrainConfig
    from renderloop.trainers.evaluation import evaluate_run

    cfg = load_config("eval", overrides, TrainConfig)
    _print_results(evaluate_run(cfg.method_name, cfg.method_config, cfg.run_dir, cfg.device), f"{cfg.run_dir}/eval")


def _demo(overrides: list[str]) -> None:
    from .demo import DemoConfig, demo

    cfg = load_config("demo", overrides, DemoConfig)
    _print_results(demo(cfg, overrides), f"{cfg.run_dir}/eval")


def _dashboard(overrides: list[str]) -> None:
    from renderloop.cluster.prometheus import DashboardConfig, serve_dashboard

    serve_dashboard(load_config("dashboard", overrides, DashboardConfig))


def _print_results(results: dict, where: str) -> None:
    for key, value in results.items():
        print(f"{key:>32}: {value:.3f}" if isinstance(value, float) else f"{key:>32}: {value}")
    print(f"figures and results in {where}")


def _generate(overrides: list[str]) -> None:
    from renderloop.cluster.generate import GenerateConfig, generate

    cfg = load_config("generate", overrides, GenerateConfig)
    s = generate(cfg)
    print(
        f"{s['samples']} samples in {s['seconds']:.1f} s ({s['samples_per_s']:.1f} samples/s); "
        f"stream {s['stream']}: {s['shards']} shards, {s['bytes'] / 2**20:.1f} MiB"
    )


def _inspect(root: str, overrides: list[str]) -> None:
    from renderloop.datasets.inspection import InspectConfig, run

    cfg = load_config("inspect", [f"root={root}", *overrides], InspectConfig)
    print("\n".join(run(cfg)))


def _export(overrides: list[str]) -> None:
    from renderloop.datasets.export import ExportConfig, export

    s = export(load_config("export", overrides, ExportConfig))
    print(
        f"exported {s['samples']} samples of stream {s['stream']} ({s['shards_read']} shards read, "
        f"{s['shards_skipped']} skipped) into {len(s['tars'])} tar{'s' * (len(s['tars']) != 1)}: {s['url']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "inspect":
            _inspect(args.root, args.overrides)
        else:
            handlers = {
                "info": _info,
                "demo": _demo,
                "generate": _generate,
                "export": _export,
                "train": _train,
                "run": _run,
                "eval": _eval,
                "turntable": _turntable,
                "dashboard": _dashboard,
            }
            handlers[args.command](args.overrides)
    except (ConfigError, InputError) as err:
        _report(args.command, err)
        return 2
    except RenderloopError as err:
        _report(args.command, err)
        return 1
    return 0


def _report(command: str, err: Exception) -> None:
    """``err`` as one line on stderr, however many lines its message has."""
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    print(f"renderloop {command}: {message}", file=sys.stderr)
