"""A real Prefect server on 127.0.0.1 for the end-to-end tests, started and stopped by the suite."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from likeness.run.prefect_server import free_port

STARTUP_TIMEOUT_S = 90
START_ATTEMPTS = 3
# The server's database in memory. Prefect supports it (prefect/server/database/configurations.py keeps an in-memory
# SQLite on one pooled connection for the server's life; its migrations run on that engine): every request and service
# then takes turns on one connection, so none meets SQLITE_BUSY, which on a file the server answers with a 503 and the
# client retries 2 s later (5-10 times in one whole-catalogue run). The tests of the databases a studio runs on
# (tests/test_batch_scale.py) name theirs.
IN_MEMORY = "sqlite+aiosqlite:///:memory:"


def api_post(api: str, path: str, body: dict) -> list[dict]:
    """POST a JSON body to the Prefect REST API; returns the decoded answer."""
    request = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def likeness_server_pids(cli_pid: int) -> list[int]:
    """Live processes serving the temporary Prefect server of the `likeness` CLI with this pid (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        # argv: python -m likeness.run.prefect_server PORT CLI_PID
        if (
            argv[1:3] == [b"-m", b"likeness.run.prefect_server"]
            and argv[4:5] == [str(cli_pid).encode()]
            and state != "Z"
        ):
            found.append(int(entry.name))
    return found


def quiet_prefect_env(home: Path) -> dict[str, str]:
    """Environment for a Prefect process that keeps its state in `home` and talks only to loopback."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
    }


@contextmanager
def prefect_server(home: Path, ui: bool = False, database: str = IN_MEMORY) -> Iterator[str]:
    """Run `prefect server start` on a free loopback port with its data in `database` (a SQLAlchemy URL); yields
    the API URL. With `ui`, it also serves the UI (the v2 front end at /v2/, v1 at the root) and is ready when both
    answer."""
    home.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, **quiet_prefect_env(home)}
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
        if ui:
            env["PREFECT_UI_ENABLED"] = "true"
            env["PREFECT_UI_API_URL"] = f"{base}/api"
            # The UI's files are copied out of the prefect package on start: into the test's folder, not the venv.
            env["PREFECT_UI_STATIC_DIRECTORY"] = str(home / "ui")
        env.pop("PREFECT_API_URL", None)
        log = (home / "server.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        api = f"{base}/api"
        ready = [f"{api}/health", *([f"{base}/v2/"] if ui else [])]
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not all(_answers(url) for url in ready):
                if process.poll() is not None or time.monotonic() > deadline:
                    tail = (home / "server.log").read_text(errors="replace")[-3000:]
                    if "already in use" in tail and attempt < START_ATTEMPTS:
                        break  # another process took the port since it was picked: pick another
                    raise RuntimeError(f"Prefect server did not start on {api}:\n{tail}")
                time.sleep(0.5)
            else:
                yield api
                return
        finally:
            if "prefect" in sys.modules:
                # Flows run in this process queue their logs: send them while the server still answers.
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=5)
            stop_process_group(process)
            log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def stop_process_group(process: subprocess.Popen, first: signal.Signals = signal.SIGTERM) -> None:
    """Send `first` to the process group a server was started in; SIGKILL it if it has not ended 15 s later."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as api:
        yield api
