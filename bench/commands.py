"""Running the project's command line from a benchmark: one subprocess per command, its output
appended to a log, a failure reported with the log's path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def renderloop(command: str, *overrides: str, log: Path) -> float:
    """``renderloop <command> <overrides>``: its wall seconds; exits with a message naming ``log``
    if it fails. The log gets a line when the command starts and one when it ends (UTC clock, run
    folder), so where a benchmark's time went shows even when many runs share one log and a limit
    cuts the benchmark short."""
    run = next((o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")), "")
    _mark(log, f"start {command} {run}")
    start = time.monotonic()
    with open(log, "a") as out:
        proc = subprocess.run([sys.executable, "-m", "renderloop.cli", command, *overrides], stdout=out,
                              stderr=subprocess.STDOUT, check=False)  # fmt: skip
    seconds = time.monotonic() - start
    _mark(log, f"end {command} {run} rc={proc.returncode} {seconds:.1f} s")
    if proc.returncode:
        raise SystemExit(f"renderloop {command} failed ({proc.returncode}); see {log}")
    return seconds


def share_cpus(processes: int) -> None:
    """Give each of ``processes`` commands run at once an equal share of the CPU cores as its
    thread count, unless the caller set one: every process otherwise starts one thread per core,
    and a dozen of them sharing a GPU host spend their evaluations switching threads."""
    share = str(max(1, (os.cpu_count() or 1) // max(1, processes)))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, share)


def claim(folder: Path, settings: list[str]) -> None:
    """Record the settings ``folder``'s run is made with, or exit if an earlier call made it with
    others: benches reuse finished runs and resume killed ones, which under other settings would
    mix old rows into new tables without a word."""
    record = folder / "bench_settings.json"
    if record.exists():
        made = json.loads(record.read_text())
        if made != list(settings):
            differ = [s for s in made if s not in settings] + [s for s in settings if s not in made]
            raise SystemExit(f"{folder} holds a run made with other settings ({', '.join(differ[:6])}); "
                             "use another --work folder or remove that run")  # fmt: skip
        return
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(list(settings)) + "\n")


def _mark(log: Path, what: str) -> None:
    with open(log, "a") as out:
        out.write(f"bench {time.strftime('%H:%M:%S', time.gmtime())} {what}\n")


def save_seconds(run_dir: Path, seconds: dict[str, float]) -> None:
    """Keep a run's commands' wall seconds beside its evaluation (a finished run is reused), added
    to those of earlier calls (a run continued over several)."""
    total = saved_seconds(run_dir)
    total.update({key: total.get(key, 0.0) + value for key, value in seconds.items()})
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "eval" / "bench_seconds.json").write_text(json.dumps(total))


def saved_seconds(run_dir: Path) -> dict[str, float]:
    path = run_dir / "eval" / "bench_seconds.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _train_log(run_dir: Path) -> list[dict]:
    log = run_dir / "train_log.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []


def last_step(run_dir: Path) -> int:
    """The last step a run logged to ``train_log.jsonl`` (0 if none): how far a time-capped run got."""
    return max((record.get("step", 0) for record in _train_log(run_dir)), default=0)


def saved_step(run_dir: Path) -> int:
    """The step of a run's newest checkpoint (0 if none): how many steps a time-capped training has
    finished, whatever its logging interval."""
    pointer = run_dir / "checkpoints" / "latest"
    name = pointer.read_text().strip() if pointer.exists() else ""
    return int(name.removeprefix("step")) if name.startswith("step") and name[4:].isdigit() else 0


THROUGHPUT = ("step", "samples_per_s", "data_wait_fraction", "data/generated_per_s")


def last_throughput(run_dir: Path) -> dict[str, float]:
    """A run's last logged step, samples/s, data-wait share and its producers' generated/s."""
    records = _train_log(run_dir)
    return {key: records[-1][key] for key in THROUGHPUT if key in records[-1]} if records else {}


def phase_throughput(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per optimization phase (the ``loss/<phase>/...`` keys of each logged step): the logged steps
    where it ran alone, and their median samples/s and seconds per step."""
    by_phase: dict[str, list[dict]] = {}
    for record in _train_log(run_dir):
        phases = {key.split("/")[1] for key in record if key.startswith("loss/")}
        if len(phases) == 1 and "samples_per_s" in record:
            by_phase.setdefault(phases.pop(), []).append(record)

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return {phase: {"logged_steps": len(records),
                    "samples_per_s": median([r["samples_per_s"] for r in records]),
                    "step_seconds": median([r.get("step_seconds", float("nan")) for r in records])}
            for phase, records in by_phase.items()}  # fmt: skip
