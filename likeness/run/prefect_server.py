"""The temporary Prefect server of one CLI run, which never outlives the CLI.

Prefect's own temporary server is a child in the CLI's process group: a Ctrl-C in the terminal
stops it at the same moment as the run, so the run's last API calls (marking itself crashed)
retry against a dead server for a minute or more; and a CLI killed with SIGKILL leaves it
running. This one runs in its own session (a terminal's Ctrl-C does not reach it), is stopped by
the CLI when the run ends, and stops itself within a fraction of a second when the CLI is gone.

    with TemporaryPrefectServer() as api_url:   # before Prefect is imported by the CLI
        os.environ["PREFECT_API_URL"] = api_url
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from likeness.heap import collect_less_often

STARTUP_TIMEOUT_S = 90
PARENT_POLL_S = 0.2
STOP_GRACE_S = 1.0
START_LOCK = "likeness-server-start.lock"
# Where a server's port is picked: below the ports the kernel gives outgoing connections (from 32768 on Linux by
# default), so that no connection opened between the check and the server's bind can take it.
LISTEN_PORTS_FROM = 20000
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


class ServerStartError(RuntimeError):
    """The temporary Prefect server did not come up."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, below the kernel's ephemeral range where one is (else any)."""
    below = range(LISTEN_PORTS_FROM, max(LISTEN_PORTS_FROM, _first_ephemeral_port()))
    for port in random.sample(below, k=min(32, len(below))):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _first_ephemeral_port() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class TemporaryPrefectServer:
    """`prefect server` on a free loopback port for as long as this process lives."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._start_lock: int | None = None

    def start(self) -> None:
        """Launch the server; `wait_ready` blocks until it answers.

        Servers that share a PREFECT_HOME share its database, and two that create its tables at once fail
        ("table ... already exists"): one starts at a time, each holding a lock in that home until it answers.
        """
        self._lock_start()
        # As Prefect starts its own temporary server: no UI, and only the services a short run needs.
        env = {
            **os.environ,
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT__SERVER_EPHEMERAL": "1",
        }
        env.pop("PREFECT_API_URL", None)
        log = self._log_path.open("ab") if self._log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "likeness.run.prefect_server", str(self.port), str(os.getpid())],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        finally:
            if self._log_path:
                log.close()

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> str:
        """Block until the API answers its health check; returns the API URL."""
        assert self._process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._unlock_start()
                raise ServerStartError(f"the temporary Prefect server exited with code {self._process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        self._unlock_start()
                        return self.api_url
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ServerStartError(f"the temporary Prefect server did not answer on {self.api_url} in {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server; killed if it takes over a second (SQLite has committed every answered request)."""
        self._unlock_start()
        if self._process is None or self._process.poll() is not None:
            return
        # uvicorn's graceful shutdown waits for clients' idle keep-alive connections to close.
        self._process.terminate()
        try:
            self._process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)

    def _lock_start(self) -> None:
        home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
        home.mkdir(parents=True, exist_ok=True)
        self._start_lock = os.open(home / START_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._start_lock, fcntl.LOCK_EX)

    def _unlock_start(self) -> None:
        if self._start_lock is not None:
            os.close(self._start_lock)  # closing releases the lock
            self._start_lock = None

    def __enter__(self) -> str:
        self.start()
        return self.wait_ready()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _exit_when_orphaned(parent_pid: int) -> None:
    """End this process as soon as the CLI that started it is gone, however it ended."""
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def main(port: int, parent_pid: int) -> None:
    """Serve Prefect's API on 127.0.0.1:`port` until `parent_pid` exits or this process is told to stop."""
    if os.getppid() != parent_pid:
        return
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    collect_less_often()
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
