"""What an experiment bench prints and writes: its rows as mean ± interval, and a JSON report
stamped with when, where and how it ran."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def print_rows(rows: dict[str, dict[str, tuple]]) -> None:
    """One line per row: each score's mean ± its 95% half-width."""
    width = max((len(name) for name in rows), default=0)
    for name, row in rows.items():
        print(f"{name:>{width}} " + " ".join(f"{s} {v[0]:.3f} ± {v[1]:.3f}" for s, v in row.items()))


def command_line() -> list[str]:
    """How this bench was started, without the checkout's location: ``python -m bench.x`` and its arguments."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["python", "-m", spec.name] if spec else [Path(sys.argv[0]).name]
    return [*program, *sys.argv[1:]]


def write_report(path: str | Path, **sections: Any) -> None:
    """``sections`` as JSON at ``path``, after a ``meta`` section (date, host, command line)."""
    meta = {"date": datetime.now(timezone.utc).isoformat(), "host": platform.node(), "argv": command_line()}
    Path(path).write_text(json.dumps({"meta": meta, **sections}, indent=2) + "\n")
