"""The ``renderloop`` command: ``renderloop <command> [key=value ...]`` (Hydra overrides)."""

from __future__ import annotations

import argparse
import sys

from renderloop.config import ConfigError, load_config

COMMANDS = {
    "info": "print versions, devices, renderer backends and the compile cache location",
    "demo": "render a turntable of a mesh with renderloop's renderers and write a PNG sheet",
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
        cmd.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Hydra config overrides")
    return parser


def _info(overrides: list[str]) -> None:
    from renderloop.info import collect, format_report
    from renderloop.renderers.renderer import RendererConfig

    cfg = load_config("info", overrides)
    renderer = RendererConfig(**cfg.renderer)
    print(format_report(collect(renderer)))


def _demo(overrides: list[str]) -> None:
    from renderloop.demo import DemoConfig, run

    cfg = load_config("demo", overrides, DemoConfig)
    print(f"wrote {run(cfg)}")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        {"info": _info, "demo": _demo}[args.command](args.overrides)
    except ConfigError as err:
        print(f"renderloop {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
