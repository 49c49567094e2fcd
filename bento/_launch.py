"""Starting the service as a process: the command line, its environment, and waiting until it is ready.

Used by `knowacq serve`, `knowacq bench-serve` and the end-to-end tests, so that all three start the
server the same way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from knowacq.errors import KnowacqError

__all__ = ["SERVICE", "ServerProcess", "free_port", "serve_command", "service_env"]

SERVICE = "bento.service:Classifier"


def serve_command(host: str, port: int, service: str = SERVICE) -> list[str]:
    """The `bentoml serve` command line of the service (or of another BentoML `service`), on `host`:`port`."""
    return [sys.executable, "-m", "bentoml", "serve", service, "--host", host, "--port", str(port)]


def service_env(settings: Mapping[str, str | int | float | bool | None]) -> dict[str, str]:
    """The current environment plus `KNOWACQ_*` for each setting given (None: left out)."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    for name, value in settings.items():
        if value is None:
            continue
        env[f"KNOWACQ_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A `bentoml serve` subprocess on loopback; `with ServerProcess(...) as server:` waits for /readyz.
    `service`: another BentoML service to serve instead of knowacq's (`settings` still become `KNOWACQ_*`)."""

    def __init__(
        self,
        settings: Mapping[str, str | int | float | bool | None],
        *,
        port: int | None = None,
        log_file: Path | None = None,
        startup_timeout: float = 120.0,
        cwd: Path | None = None,
        service: str = SERVICE,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = dict(settings)
        self.log_file = log_file
        self.startup_timeout = startup_timeout
        self.cwd = cwd
        self.service = service
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        self.process = subprocess.Popen(
            serve_command("127.0.0.1", self.port, self.service),
            env=service_env(self.settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise KnowacqError(
                    f"the server exited with code {self.process.returncode} while starting"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            failure = self._startup_failure()
            if failure:
                self.stop()
                raise KnowacqError(f"the server failed to start: {failure}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise KnowacqError(
            f"the server was not ready within {self.startup_timeout:.0f} s"
            + (f"; see {self.log_file}" if self.log_file else "")
        )

    def _startup_failure(self) -> str:
        """The error that stopped a worker from starting, read from the log (BentoML keeps retrying)."""
        if self.log_file is None or not self.log_file.is_file():
            return ""
        text = self.log_file.read_text(errors="replace")
        if "Application startup failed" not in text:
            return ""
        errors = [line for line in text.splitlines() if "Error:" in line and not line.startswith(" ")]
        return errors[-1].strip() if errors else f"see {self.log_file}"

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM to the whole process group, then SIGKILL to every process of the server after `grace`
        seconds; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            return self.process.wait(grace)
        except subprocess.TimeoutExpired:
            return self.kill()

    @property
    def pid(self) -> int:
        """The `bentoml serve` process id (its workers are its children)."""
        if self.process is None:
            raise KnowacqError("the server has not been started")
        return self.process.pid

    def worker_pids(self) -> list[int]:
        """Process ids of the server's descendants (BentoML's workers)."""
        import psutil

        if self.process is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> int | None:
        """SIGKILL to the server and all its workers at once, like the end of a container (kill -9).
        BentoML starts each worker in a session of its own, so killing the process group is not enough."""
        if self.process is None:
            return None
        import psutil

        try:
            parent = psutil.Process(self.process.pid)
            family = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=10)
        return self.process.wait(10)
