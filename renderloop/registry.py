"""Name → (config schema, class) tables for methods, sources and tasks: one lookup, one error.

A registry is a plain mapping written out where its entries are imported, so what is registered
never depends on which modules happen to have been imported.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from renderloop.config import ConfigError, to_schema

__all__ = ["Entry", "Registry"]


@dataclass(frozen=True)
class Entry:
    config: type | None
    """The config dataclass the class is built from (None: the class takes its owner's config)."""
    cls: type

    @property
    def summary(self) -> str:
        """The first line of the class's docstring."""
        return ((self.cls.__doc__ or "").strip().splitlines() or [""])[0]


class Registry(Mapping[str, Entry]):
    """Named entries of one kind; ``key`` is the dotted config key that names one (e.g. ``method.name``)."""

    def __init__(self, key: str, entries: Mapping[str, Entry | tuple[type | None, type]]) -> None:
        self.key = key
        self._entries = {name: e if isinstance(e, Entry) else Entry(*e) for name, e in entries.items()}

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: Any) -> Entry:
        """The entry ``name``; an unknown name is a ``ConfigError`` at ``key`` listing the choices."""
        if name not in self._entries:
            raise ConfigError(self.key, f"must be one of {sorted(self._entries)}; got {name!r}")
        return self._entries[name]

    def resolve(self, node: Any) -> tuple[str, Any]:
        """``(name, validated config)`` of a config node holding ``name`` and the entry's keys."""
        from omegaconf import OmegaConf

        plain = dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)
        name = plain.pop("name", None)
        schema = self.entry(name).config
        return name, to_schema(schema, plain, self.key.rsplit(".", 1)[0])
