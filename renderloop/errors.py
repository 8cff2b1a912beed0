"""Operational errors the CLI reports in one line (configuration errors are ``config.ConfigError``)."""

from __future__ import annotations

__all__ = ["RenderloopError"]


class RenderloopError(RuntimeError):
    """A run stopped for a reason the user must act on (storage refused writes, producers failed)."""
