"""Local TCP ports."""

from __future__ import annotations

import socket

from renderloop.config import ConfigError

__all__ = ["check_port", "free_port"]


def free_port() -> int:
    """A port that is free on 127.0.0.1 now (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_port(key: str, port: int, *, off: int | None = None) -> None:
    """Refuse a TCP port outside 0 (any free one) to 65535, or ``off`` where the config allows one."""
    if port != off and not 0 <= port <= 65535:
        allowed = "0 (any free port) to 65535" + (f", or {off} (off)" if off is not None else "")
        raise ConfigError(key, f"must be {allowed}; got {port}")
