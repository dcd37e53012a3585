"""The first runs on a Prefect server, or CLIs sharing one PREFECT_HOME, start at once and all complete."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from prefect.exceptions import ObjectAlreadyExists

from likeness.storage import results
from tests.prefect_server import prefect_server, quiet_prefect_env

REGISTER = "from likeness.storage.results import save_results_block; print(save_results_block())"
# What the CLI does before its flow: a temporary server of its own in PREFECT_HOME, then the results block.
TEMPORARY_SERVER_THEN_REGISTER = """
import os
from likeness.run.prefect_server import TemporaryPrefectServer
with TemporaryPrefectServer() as api:
    os.environ["PREFECT_API_URL"] = api
    from likeness.storage.results import save_results_block
    print(save_results_block())
"""
SLUG = "likeness-artifact-store/likeness-results"


def _run_at_once(code: str, envs: list[dict[str, str]]) -> list[tuple[int, str, str]]:
    """Start one process per environment at once; each one's exit code, stdout and stderr."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, **pipes) for env in envs]
    answers = []
    for process in processes:
        out, err = process.communicate(timeout=180)
        answers.append((process.returncode, out, err))
    return answers


def _env(home: Path, tmp_path: Path, api: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIKENESS_", "PREFECT_"))}
    env.update(quiet_prefect_env(home), LIKENESS_DATA_DIR=str(tmp_path / "likeness-data"))
    if api:
        env["PREFECT_API_URL"] = api
    else:
        env.pop("PREFECT_API_DATABASE_CONNECTION_URL")  # the CLI's own server: the home's database
    return env


def test_a_lost_registration_race_is_read_again_not_raised(monkeypatch):
    tries = []

    def register() -> None:
        tries.append("register")
        if len(tries) < 3:
            raise ObjectAlreadyExists(None)

    monkeypatch.setattr(results.ArtifactStoreResults, "register_type_and_schema", register)
    monkeypatch.setattr(results.ArtifactStoreResults, "save", lambda self, name, overwrite: uuid.uuid4())
    assert results.save_results_block() == SLUG
    assert len(tries) == 3


def test_a_registration_that_always_conflicts_still_fails(monkeypatch):
    def register() -> None:
        raise ObjectAlreadyExists(None)

    monkeypatch.setattr(results.ArtifactStoreResults, "register_type_and_schema", register)
    with pytest.raises(ObjectAlreadyExists):
        results.save_results_block()


@pytest.mark.slow
def test_four_first_runs_on_a_fresh_server_all_register(tmp_path):
    with prefect_server(tmp_path / "server") as api:
        envs = [_env(tmp_path / f"client-{n}", tmp_path, api) for n in range(4)]
        answers = _run_at_once(REGISTER, envs)
    assert [(code, out.strip()) for code, out, _ in answers] == [(0, SLUG)] * 4, [err for *_, err in answers]


@pytest.mark.slow
def test_four_clis_sharing_a_prefect_home_all_start_their_servers(tmp_path):
    envs = [_env(tmp_path / "shared-home", tmp_path, None) for _ in range(4)]
    answers = _run_at_once(TEMPORARY_SERVER_THEN_REGISTER, envs)
    assert [(code, out.strip()) for code, out, _ in answers] == [(0, SLUG)] * 4, [err for *_, err in answers]


def test_a_servers_port_is_picked_below_the_ports_outgoing_connections_take(tmp_path, monkeypatch):
    import socket

    from likeness.run import prefect_server as server

    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {server.free_port() for _ in range(20)}
    assert all(server.LISTEN_PORTS_FROM <= port < first_ephemeral for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free
    # A kernel that gives outgoing connections every port from 1024: any free port.
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("1024\t65535\n")
    monkeypatch.setattr(server, "EPHEMERAL_RANGE", narrow)
    assert 1024 <= server.free_port() <= 65535


def test_the_test_server_picks_another_port_when_its_first_is_taken_before_it_binds(tmp_path, monkeypatch):
    import socket

    import tests.prefect_server as harness

    pick = harness.free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picks = iter([port])
        # The first port picked is taken before the server binds it, as another process can.
        monkeypatch.setattr(harness, "free_port", lambda: next(picks, None) or pick())
        with prefect_server(tmp_path / "home") as api:
            assert f":{port}/" not in api
