"""Configuration: typed Hydra configs, loading and validation before any heavy work starts.

Each component keeps its ``Config`` dataclass next to its code. ``load_config`` composes
``renderloop/conf/<command>.yaml`` with the user's overrides, merges it into the command's schema
dataclass (types checked, unknown keys refused) and so runs every ``__post_init__`` check;
``to_schema`` does the same for a subtree whose schema depends on a name in it (a method, a
source). Errors name the dotted key.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "load_config", "to_schema", "check_roles", "check_values"]


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
