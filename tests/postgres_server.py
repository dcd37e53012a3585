"""A real PostgreSQL server on 127.0.0.1 for the tests that run Prefect on it, started and stopped by the suite.

Debian's `postgresql` package (15 here; `.ci/run` installs it): `initdb` into the test's folder with trust
authentication on loopback only, `fsync` off (the data dies with the test). PostgreSQL refuses to run as root, so
as root the server runs as the package's `postgres` user.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from likeness.run.prefect_server import free_port
from tests.prefect_server import stop_process_group

STARTUP_TIMEOUT_S = 30


def postgres_bin() -> Path | None:
    """The folder of Debian's newest PostgreSQL server programs, or None when none is installed."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


def _as_server_user(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextmanager
def postgres_server() -> Iterator[str]:
    """Run PostgreSQL with its data in a new folder on a free loopback port; yields an asyncpg URL for Prefect."""
    programs = postgres_bin()
    if programs is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    # Not under pytest's folders, which only root may enter: the server's user must reach its data.
    folder = Path(tempfile.mkdtemp(prefix="likeness-postgres-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    data, port = folder / "data", free_port()
    subprocess.run(
        _as_server_user([str(programs / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]),
        check=True,
        capture_output=True,
    )
    log = (folder / "postgres.log").open("wb")
    process = subprocess.Popen(
        _as_server_user(
            [str(programs / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(folder)]
            + ["-c", "fsync=off", "-c", "max_connections=200"]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while b"ready to accept connections" not in (folder / "postgres.log").read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start:\n{(folder / 'postgres.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        # SIGINT is PostgreSQL's fast shutdown: it does not wait for the clients (a Prefect server) to leave.
        stop_process_group(process, first=signal.SIGINT)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
