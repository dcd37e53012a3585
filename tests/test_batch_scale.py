"""A studio's batch at scale: 20 characters, 4 at a time, through the deployments, on a Prefect server whose
database is SQLite (a file, as `prefect server start` keeps it) and on one whose database is PostgreSQL.

What a team counts on: every row produced exactly once (no lost and no duplicated runs), every stage run on the
GPU pool completed, and no worker or run ever met "database is locked"; on PostgreSQL, not the server either. Each
database takes minutes on 2 cores, so these run apart from the suite: `bin/test -m scale -n 0 -s` (`.ci/run` does).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import pytest

from tests.conftest import cli_env
from tests.postgres_server import postgres_server
from tests.prefect_server import api_post, prefect_server
from tests.test_operations_e2e import STAGE_FLOWS, Machines, s3_client, started_run, table

pytestmark = pytest.mark.scale

ROWS = 20
CONCURRENCY = 4
# One shot, one still and the shortest training: what is under load here is the server, not the models.
ROW_SETTINGS = '["dataset.variations=[front]", "render.video_prompts=[]", "train.steps=3"]'
LOCKED = "database is locked"
BATCH_TIMEOUT_S = 1800


@pytest.fixture(params=["sqlite", "postgresql"])
def studio_on(request, tmp_path, models_dir, s3_server, face_photo) -> Iterator[tuple[Machines, Path, str]]:
    """A deployed studio whose Prefect server keeps its data in the database named by the parameter."""
    database = request.param
    with _database(database, tmp_path) as url, prefect_server(tmp_path / "server", database=url) as api:
        bucket, prefix = "likeness-scale", f"{database}-{time.time_ns()}"
        base_env = {
            **cli_env(tmp_path / "common", models_dir, api),
            "LIKENESS_STORE_URI": f"s3://{bucket}/{prefix}",
            "LIKENESS_S3_ENDPOINT": s3_server.endpoint,
            "LIKENESS_S3_ACCESS_KEY": s3_server.access_key,
            "LIKENESS_S3_SECRET_KEY": s3_server.secret_key,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        machines = Machines(tmp_path, api, base_env)
        client = s3_client(s3_server)
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        photo = face_photo.read_bytes()
        client.put_object(bucket, f"{prefix}/batch/photo.jpg", io.BytesIO(photo), len(photo))
        rows = "".join(
            f"- {{name: Character {n:02d}, image: photo.jpg, profile: tiny, set: {ROW_SETTINGS}}}\n"
            for n in range(1, ROWS + 1)
        ).encode()
        client.put_object(bucket, f"{prefix}/batch/scale.yaml", io.BytesIO(rows), len(rows))
        try:
            deployed = machines.likeness("deploy", "--gpu-slots", str(CONCURRENCY))
            assert deployed.returncode == 0, deployed.stderr[-3000:]
            machines.start_worker("cpu-machine", "likeness-cpu")
            machines.start_worker("gpu-machine", "likeness-gpu", "--limit", str(CONCURRENCY))
            yield machines, tmp_path / "server", database
        finally:
            for machine in list(machines.workers):
                machines.stop_worker(machine)


def _database(name: str, tmp: Path) -> AbstractContextManager[str]:
    """PostgreSQL started for the test, or the SQLite file `prefect server start` keeps by default."""
    if name == "postgresql":
        return postgres_server()
    return nullcontext(f"sqlite+aiosqlite:///{tmp / 'server' / 'prefect.db'}")


def test_a_batch_of_twenty_four_at_a_time_produces_each_character_once(studio_on):
    studio, server_home, database = studio_on
    started = time.monotonic()
    batch = studio.likeness(
        "run", "batch", "-p", "manifest=batch/scale.yaml", "-p", f"concurrency={CONCURRENCY}", "--watch",
        timeout=BATCH_TIMEOUT_S,
    )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"{database}: {ROWS} characters, {CONCURRENCY} at a time, in {seconds:.0f} s")
    assert batch.returncode == 0, batch.stderr[-4000:]

    rows = table(studio, "batch-scale")
    assert [row["row"] for row in rows] == list(range(1, ROWS + 1))
    assert all(row["status"] == "produced" for row in rows), [row["status"] for row in rows]

    runs = studio.runs_under(started_run(batch.stderr))
    by_flow: dict[str, list[dict]] = {}
    for run in runs:
        by_flow.setdefault(studio.flow_name(run), []).append(run)
    produced = by_flow["produce-character"]
    names = sorted(run["parameters"]["name"] for run in produced)
    assert names == [f"Character {n:02d}" for n in range(1, ROWS + 1)], "a row lost or produced twice"
    for stage in STAGE_FLOWS:
        assert len(by_flow[stage]) == ROWS, stage
    assert all(run["state"]["type"] == "COMPLETED" for run in runs), {
        run["name"]: run["state"]["name"] for run in runs if run["state"]["type"] != "COMPLETED"
    }
    # Nor one started twice beside them: the server holds no other run of these flows.
    for name in STAGE_FLOWS | {"produce-character"}:
        query = {"flows": {"name": {"any_": [name]}}, "limit": 200}
        assert len(api_post(studio.api, "/flow_runs/filter", query)) == ROWS, name

    # No worker or run ever met a locked database. SQLite's server does: a write of its own (a worker's heartbeat)
    # that upgrades a read transaction fails at once, whatever its busy timeout, and the client tries it again.
    assert not [log.name for log in studio.tmp.glob("*-machine.log") if LOCKED in log.read_text(errors="replace")]
    locked = (server_home / "server.log").read_text(errors="replace").count(f"OperationalError: {LOCKED}")
    print(f"{database}: the server's own writes met '{LOCKED}' {locked} times")
    if database == "postgresql":
        assert locked == 0
