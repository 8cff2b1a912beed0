"""Configuration: typed Hydra configs, loading and validation before any heavy work starts.

Each component keeps its ``Config`` dataclass next to its code. ``load_config`` composes
``renderloop/conf/<command>.yaml`` with the user's overrides, merges it into the command's schema
dataclass (types checked, unknown keys refused) and so runs every ``__post_init__`` check;
``to_schema`` does the same for a subtree whose schema depends on a name in it (a method, a
source). Errors name the dotted key.
"""

from __future__ import annotations

import math
import operator
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "ConfigError",
    "load_config",
    "to_schema",
    "check_roles",
    "check_values",
    "check_number",
    "check_image_size",
    "check_output_file",
    "MAX_IMAGE_SIDE",
    "MAX_BATCH_PIXELS",
    "IMAGE_SUFFIXES",
]

MAX_IMAGE_SIDE = 8192
"""Largest image height or width in pixels. One 8192² image already needs about 18 GiB of render
buffers (the simulator measured about 280 bytes per pixel, ``BENCHMARKS.md``: 4.4 GiB at 1024 × 128²)."""
MAX_BATCH_PIXELS = 2**27
"""Most pixels one batch may hold (batch × height × width): 8× the largest measured simulator batch,
about 35 GiB of render buffers. Larger batches fail in the allocator only after work has started."""
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File name endings an image (a contact sheet, a turntable) can be written as; they pick the format."""


class ConfigError(ValueError):
    """A bad configuration value; the message starts with the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config error at {key}: {message}")
        self.key = key


def load_config(command: str, overrides: list[str] | tuple[str, ...] = (), schema: type | None = None) -> Any:
    """Compose ``conf/<command>.yaml`` with Hydra ``overrides``; validate against ``schema``.

    Returns the schema dataclass instance (or a plain ``DictConfig`` if ``schema`` is None).

    Raises:
        ConfigError: unknown keys or groups, wrong types, or values a ``__post_init__`` refuses.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("renderloop.conf", version_base="1.3"):
            cfg = compose(config_name=command, overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError("overrides", _first_line(err)) from None
    if schema is None:
        return cfg
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "config"
        raise ConfigError(str(key), _first_line(err)) from None


def _first_line(err: BaseException) -> str:
    """The first non-empty message line of ``err`` or of its causes."""
    while err is not None:
        lines = [line for line in str(err).splitlines() if line.strip()]
        if lines:
            return lines[0]
        err = err.__cause__ or err.__context__
    return "invalid configuration"


def to_schema(schema: type, node: Any, key: str) -> Any:
    """Validate a config subtree ``node`` (found at dotted ``key``) against dataclass ``schema``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None)
        raise ConfigError(f"{key}.{sub}" if sub else key, _first_line(err)) from None


def check_roles(data: Any, roles: tuple[str, ...], key: str = "method.data") -> None:
    """A method's ``data`` holds exactly ``roles``, each a source config with a ``name``."""
    if set(data) != set(roles):
        raise ConfigError(key, f"needs exactly the roles {sorted(roles)}; got {sorted(data)}")
    for role, node in data.items():
        if (node.get("name") if isinstance(node, dict) else getattr(node, "name", None)) is None:
            raise ConfigError(f"{key}.{role}", "needs a source config with a name")


def check_values(config: Any, checks: dict[str, bool], prefix: str = "method") -> None:
    """Refuse the first failed check; its key is a dotted path into ``config`` (shown with its value)."""
    for key, ok in checks.items():
        if not ok:
            value = config
            for part in key.split("."):
                value = getattr(value, part)
            raise ConfigError(f"{prefix}.{key}", f"out of range; got {value!r}")


def check_number(
    key: str,
    value: float | Sequence[float] | None,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
    strict: bool = False,
    optional: bool = False,
    note: str = "",
) -> None:
    """Refuse a number, or a ``[lo, hi]`` range of two, that is not finite or not within the bounds.

    NaN fails every comparison, so a check written as "refuse if x < 0" lets it through, and infinity
    passes a lower bound; both end as NaN losses or renders long after the start. A range must also be
    ordered: ``lo <= hi`` (``lo < hi`` if ``strict``). ``optional`` accepts None; ``note`` says why
    the bounds are what they are.

    Raises:
        ConfigError: "config error at <key>: must be ...; got <value>".
    """
    if value is None and optional:
        return
    limits = [(op, b) for op, b in ((">=", at_least), (">", above), ("<=", at_most), ("<", below)) if b is not None]
    pair = isinstance(value, Sequence) and not isinstance(value, str)
    items = list(value) if pair else [value]
    ok = len(items) == (2 if pair else 1) and all(_fits(x, limits) for x in items)
    if ok and pair:
        ok = items[0] < items[1] if strict else items[0] <= items[1]
    if ok:
        return
    what = " ".join(["a finite number", " and ".join(f"{op} {b:g}" for op, b in limits)]).strip()
    if pair:
        what = f"a range [lo, hi] with lo {'<' if strict else '<='} hi, each {what}"
        value = "[" + ", ".join(str(x) for x in items) + "]"
    raise ConfigError(key, f"must be {what}{f' ({note})' if note else ''}; got {value}")


def _fits(x: Any, limits: list[tuple[str, float]]) -> bool:
    """``x`` is a finite real number (not a bool) within every ``(operator, bound)`` of ``limits``."""
    number = isinstance(x, (int, float)) and not isinstance(x, bool)
    return number and math.isfinite(x) and all(_COMPARE[op](x, b) for op, b in limits)


def check_image_size(batch: tuple[str, int], height: tuple[str, int], width: tuple[str, int] | None = None) -> None:
    """Refuse image sizes whose buffers cannot fit: a side above ``MAX_IMAGE_SIDE``, or a batch of
    more than ``MAX_BATCH_PIXELS`` pixels. Each argument is ``(dotted key, value)``; ``width``
    defaults to ``height`` (square images).

    An allocator error would come only after sources, producers and streams have started, and
    would leave partial output behind; this refuses the same config before any of that.
    """
    width = width or height
    for key, side in (height, width):
        if side > MAX_IMAGE_SIDE:
            raise ConfigError(
                key, f"must be at most {MAX_IMAGE_SIDE} pixels (renderloop.config.MAX_IMAGE_SIDE); got {side}"
            )
    (key, count), pixels = batch, batch[1] * height[1] * width[1]
    if pixels > MAX_BATCH_PIXELS:
        raise ConfigError(
            key,
            f"{count} images of {height[1]}×{width[1]} pixels exceed the {MAX_BATCH_PIXELS:,} pixels a batch may "
            f"hold (renderloop.config.MAX_BATCH_PIXELS); lower {key} or the image size; got {count}",
        )


def check_output_file(key: str, path: str, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> None:
    """Refuse an output file that cannot be written: no name, a folder, a name ending in none of
    ``suffixes``, or a place where no file can be made (a file in the way of its folder, a folder
    that refuses writes). Checked before the work whose result it would hold."""
    if not path:
        raise ConfigError(key, f"needs a file name ending in one of {', '.join(suffixes)}; got {path!r}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ConfigError(
            key, f"is a folder; give a file name inside it, e.g. {path.rstrip('/')}/out.png; got {path!r}"
        )
    if target.suffix.lower() not in suffixes:
        raise ConfigError(key, f"must end in one of {', '.join(suffixes)}; got {path!r}")
    folder = target.parent
    while not folder.exists() and folder != folder.parent:  # the first folder that exists gets the new ones
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(key, f"cannot be made: {folder} is a file, not a folder; got {path!r}")
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed where the OS allows it: nothing is left behind
            pass
    except OSError as err:
        raise ConfigError(
            key, f"cannot be written: {folder} refuses new files ({err.strerror}); got {path!r}"
        ) from None
