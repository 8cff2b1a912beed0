"""Operational errors the CLI reports in one line (configuration errors are ``config.ConfigError``)."""

from __future__ import annotations

__all__ = ["RenderloopError", "InputError"]


class RenderloopError(RuntimeError):
    """A run stopped for a reason the user must act on (storage refused writes, producers failed)."""


class InputError(RenderloopError, ValueError):
    """A file, path or device the user named cannot be used (the CLI exits with status 2, as for a
    config error). Also a ``ValueError``, so callers that caught the plain error still catch it."""
