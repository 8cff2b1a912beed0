"""The ``renderloop`` command: ``renderloop <command> [key=value ...]`` (Hydra overrides)."""

from __future__ import annotations

import argparse
import sys

from renderloop.config import ConfigError, load_config, to_schema

COMMANDS = {
    "info": "print versions, devices, renderer backends and the compile cache location",
    "demo": "render a turntable of a mesh with renderloop's renderers and write a PNG sheet",
    "generate": "run a source (simulator, image folder) into a stream of WebDataset shards",
    "inspect": "summarize a stream under ROOT and write a contact sheet of samples with labels",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="renderloop",
        description="Train inverse-graphics and sim-to-real methods on synthetic data made while training runs.",
        epilog="Settings are Hydra overrides, e.g.: renderloop demo mesh=icosphere renderer.height=256",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == "inspect":
            cmd.add_argument("root", metavar="ROOT", help="storage root (path or fsspec URL)")
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra config overrides")
    return parser


def _info(overrides: list[str]) -> None:
    from renderloop.info import collect, format_report
    from renderloop.renderers.renderer import RendererConfig

    cfg = load_config("info", overrides)
    renderer = to_schema(RendererConfig, cfg.renderer, "renderer")
    print(format_report(collect(renderer)))


def _demo(overrides: list[str]) -> None:
    from renderloop.demo import DemoConfig, run

    cfg = load_config("demo", overrides, DemoConfig)
    print(f"wrote {run(cfg)}")


def _generate(overrides: list[str]) -> None:
    from renderloop.generate import GenerateConfig, run

    cfg = load_config("generate", overrides, GenerateConfig)
    s = run(cfg)
    print(
        f"{s['samples']} samples in {s['seconds']:.1f} s ({s['samples_per_s']:.1f} samples/s); "
        f"stream {s['stream']}: {s['shards']} shards, {s['bytes'] / 2**20:.1f} MiB"
    )


def _inspect(root: str, overrides: list[str]) -> None:
    from renderloop.inspection import InspectConfig, run

    cfg = load_config("inspect", [f"root={root}", *overrides], InspectConfig)
    print("\n".join(run(cfg)))


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
            {"info": _info, "demo": _demo, "generate": _generate}[args.command](args.overrides)
    except ConfigError as err:
        print(f"renderloop {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
