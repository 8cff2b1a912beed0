"""Running the project's command line from a benchmark: one subprocess per command, its output
appended to a log, a failure reported with the log's path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def renderloop(command: str, *overrides: str, log: Path) -> None:
    """``renderloop <command> <overrides>``; exits with a message naming ``log`` if it fails."""
    with open(log, "a") as out:
        proc = subprocess.run([sys.executable, "-m", "renderloop.cli", command, *overrides], stdout=out,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    if proc.returncode:
        raise SystemExit(f"renderloop {command} failed ({proc.returncode}); see {log}")


def last_step(run_dir: Path) -> int:
    """The last step a run logged to ``train_log.jsonl`` (0 if none): how far a time-capped run got."""
    log = run_dir / "train_log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)
