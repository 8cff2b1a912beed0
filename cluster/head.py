"""A Ray head on this machine, for a local debug cluster, tests and benchmarks.

``ray start --head --block`` runs as a child process bound to 127.0.0.1 with token
authentication on; ``stop`` ends that head only (never ``ray stop``, which stops every Ray on the
machine), and on Linux the head also stops when the thread that started it dies (a killed
script). Jobs are submitted to ``dashboard_url`` with ``ray job submit --address ...``.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from renderloop.errors import RenderloopError
from renderloop.ports import free_port

__all__ = ["LocalRayHead", "ray_executable"]


def _has_token() -> bool:
    """Whether Ray would find a token here (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ~/.ray/auth_token)."""
    return (
        bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"))
        or (Path.home() / ".ray" / "auth_token").exists()
    )


def _stop_with_parent() -> None:
    """Run in the head's process before ``ray start``: on Linux, have the kernel send it SIGTERM
    when the thread that started it dies, so a killed script leaves no cluster running (``ray
    start --block`` shuts its cluster down on SIGTERM)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (so the head's workers run this interpreter)."""
    beside = Path(sys.executable).parent / "ray"
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


class LocalRayHead:
    """Start and stop a single-node Ray cluster on 127.0.0.1.

    Args:
        num_cpus, num_gpus: resources the head offers.
        token_path: file holding the cluster's auth token (``RAY_AUTH_TOKEN_PATH``); None uses
            the token Ray finds (``RAY_AUTH_TOKEN``, ``~/.ray/auth_token``) or, where there is
            none, a fresh one for this head alone. ``env`` carries it to submitters.
        env: extra environment for the head and everything it starts.
    """

    def __init__(
        self, num_cpus: float = 2, num_gpus: float = 0, token_path: str | None = None, env: dict | None = None
    ) -> None:
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.port, self.dashboard_port = free_port(), free_port()
        # Short: Ray's socket paths live under it and must stay below the Unix limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rl-ray-", dir="/tmp")
        if token_path is None and not _has_token():  # a fresh machine: a token for this head only
            token_path = str(Path(self.temp_dir) / "auth_token")
            Path(token_path).write_text(secrets.token_hex(32))
            os.chmod(token_path, 0o600)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **({"RAY_AUTH_TOKEN_PATH": token_path} if token_path else {}),
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        """GCS address, for ``ray.init(address=...)`` and ``cluster.address``."""
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        """Jobs API address, for ``ray job submit --address ...``."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 180.0) -> LocalRayHead:
        """Start the head and wait until its Jobs API answers."""
        command = [
            ray_executable(),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            f"--num-cpus={self.num_cpus}",
            f"--num-gpus={self.num_gpus}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "head.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RenderloopError(f"ray start --head exited with {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5):
                    return self
            except urllib.error.HTTPError:  # answering (auth may refuse an anonymous request)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RenderloopError(f"the Ray head did not answer within {timeout:.0f} s: {self.tail()}")

    def ray(self, *args: str, env: dict | None = None, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """Run ``ray <args>`` against this head (``job ...`` commands get ``--address``)."""
        command = [ray_executable(), *args]
        if args[:1] == ("job",):
            command[3:3] = ["--address", self.dashboard_url]
        return subprocess.run(command, env=env or self.env, capture_output=True, text=True, timeout=timeout)

    def submit(self, *args: str, env: dict | None = None, wait_agent: float = 120.0) -> subprocess.CompletedProcess:
        """``ray job submit <args>``, retried while the head's job agent is still starting."""
        deadline = time.monotonic() + wait_agent
        while True:
            result = self.ray("job", "submit", *args, env=env)
            if result.returncode == 0 or "No available agent" not in result.stderr or time.monotonic() > deadline:
                return result
            time.sleep(1.0)

    def tail(self, lines: int = 20) -> str:
        path = Path(self.temp_dir) / "head.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, timeout: float = 60.0) -> None:
        """Stop this head and the processes it started (its own process group)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # `ray start --block` shuts its cluster down
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.process is not None:
            self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayHead:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
