"""Likeness deployed: a real Prefect server, the S3 server, a CPU worker and GPU workers (each its own machine:
its own PREFECT_HOME and data folder), set up by `likeness deploy` and driven by `likeness run`."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from minio import Minio

from tests.conftest import cli_env
from tests.prefect_server import api_post, prefect_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "likeness-ops"
# One shot and a short training keep a whole character on tiny models to about a minute (each stage is still a
# run of its own on a worker: what these tests claim is where runs go and what they leave, not the dataset's size).
SMALL = ["-p", "profile=tiny", "-p", "overrides.dataset.variations=[front]"]
STAGE_FLOWS = {"produce-dataset", "train-character", "render-character"}


class Machines:
    """The processes of a small studio: one Prefect server, workers that each act as a separate machine."""

    def __init__(self, tmp: Path, api: str, base_env: dict[str, str]) -> None:
        self.tmp, self.api, self.base_env = tmp, api, base_env
        self.workers: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def env(self, machine: str) -> dict[str, str]:
        return {
            **self.base_env,
            "PREFECT_HOME": str(self.tmp / machine / "prefect-home"),
            "LIKENESS_DATA_DIR": str(self.tmp / machine / "likeness-data"),
        }

    def likeness(self, *args: str, machine: str = "laptop", timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "likeness"), *args],
            env=self.env(machine),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_worker(self, machine: str, pool: str, *extra: str) -> None:
        log = self.tmp / f"{machine}.log"
        process = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", machine, *extra],
            env=self.env(machine),
            cwd=self.tmp,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers[machine] = (process, log)

    def stop_worker(self, machine: str) -> None:
        process, _ = self.workers.pop(machine)
        # A worker sits out the first signal for 45 s or more; the second ends it (FIELD-NOTES).
        for _ in range(2):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def ran_on(self, flow_run_id: str) -> list[str]:
        """The workers whose log says they submitted this flow run."""
        return [
            log.stem
            for log in sorted(self.tmp.glob("*.log"))
            if f"Worker '{log.stem}' submitting flow run '{flow_run_id}'" in log.read_text(errors="replace")
        ]

    def runs_under(self, flow_run_id: str) -> list[dict]:
        """The flow run and every flow run started under it."""
        runs = api_post(self.api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
        pending = [flow_run_id]
        while pending:
            children = api_post(self.api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": pending}}})
            runs += children
            pending = [child["id"] for child in children]
        return runs

    def flow_name(self, run: dict) -> str:
        return api_post(self.api, "/flows/filter", {"flows": {"id": {"any_": [run["flow_id"]]}}})[0]["name"]

    def task_states_under(self, flow_run_id: str) -> dict[str, set[str]]:
        """Task name (without its suffix) -> the state names of its runs, over this run and every run under it."""
        ids = [run["id"] for run in self.runs_under(flow_run_id)]
        states: dict[str, set[str]] = {}
        for task in api_post(self.api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": ids}}}):
            states.setdefault(task["name"].rsplit("-", 1)[0], set()).add(task["state"]["name"])
        return states

    def wait_for_run(self, root_id: str, flow: str, state: str, timeout: float = 300) -> dict:
        """The run of `flow` at or under `root_id` once it is in `state` (a state type)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for run in self.runs_under(root_id):
                if run["state"]["type"] == state and self.flow_name(run) == flow:
                    return run
            time.sleep(1)
        raise AssertionError(f"no {flow} run {state} under {root_id} within {timeout} s")

    def wait_for_log(self, machine: str, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in (self.tmp / f"{machine}.log").read_text(errors="replace"):
            assert time.monotonic() < deadline, f"no {text!r} in {machine}'s log within {timeout} s"
            time.sleep(0.2)

    def set_state(self, flow_run_id: str, state: str) -> None:
        api_post(self.api, f"/flow_runs/{flow_run_id}/set_state", {"state": {"type": state}, "force": True})

    def kill_worker(self, machine: str) -> None:
        """SIGKILL a worker and every process it started, as when its machine is lost."""
        process, _ = self.workers.pop(machine)
        home = str(self.tmp / machine / "prefect-home").encode()
        for entry in Path("/proc").iterdir():
            try:
                started_there = entry.name.isdigit() and home in (entry / "environ").read_bytes()
            except OSError:
                continue
            if started_there:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
        process.wait(timeout=10)


def s3_client(server) -> Minio:
    return Minio(server.endpoint.removeprefix("http://"), server.access_key, server.secret_key, secure=False)


@pytest.fixture(scope="module")
def studio(tmp_path_factory, models_dir, s3_server, face_photo) -> Iterator[Machines]:
    tmp = tmp_path_factory.mktemp("studio")
    with prefect_server(tmp / "server") as api:
        base_env = {
            **cli_env(tmp / "common", models_dir, api),
            "LIKENESS_STORE_URI": f"s3://{BUCKET}/studio",
            "LIKENESS_S3_ENDPOINT": s3_server.endpoint,
            "LIKENESS_S3_ACCESS_KEY": s3_server.access_key,
            "LIKENESS_S3_SECRET_KEY": s3_server.secret_key,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        machines = Machines(tmp, api, base_env)
        client = Minio(
            s3_server.endpoint.removeprefix("http://"), s3_server.access_key, s3_server.secret_key, secure=False
        )
        if not client.bucket_exists(BUCKET):
            client.make_bucket(BUCKET)
        photo = face_photo.read_bytes()
        # In the store (s3://likeness-ops/studio) as `drop/Ada.jpg`: not the inbox the schedule looks at.
        client.put_object(BUCKET, "studio/drop/Ada.jpg", io.BytesIO(photo), len(photo))
        try:
            yield machines
        finally:
            for machine in list(machines.workers):
                machines.stop_worker(machine)


def test_deploy_is_one_idempotent_command(studio):
    for _ in range(2):
        deployed = studio.likeness("deploy", "--gpu-slots", "1")
        assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert "produce-character/produce" in deployed.stdout and "likeness-gpu" in deployed.stdout
    # No GPU here: a form filled in with only a name and a photo runs the tiny profile.
    assert "the run forms default to profile=tiny: no CUDA GPU on this machine" in deployed.stderr
    deployments = {d["name"]: d for d in api_post(studio.api, "/deployments/filter", {})}
    for name in ("produce", "dataset", "train", "train-runpod", "render", "batch", "inbox"):
        assert deployments[name]["parameters"]["profile"] == "tiny", name
    assert deployments["train-runpod"]["parameters"]["backend"] == "runpod-native"
    assert "profile" not in deployments["sweep-pods"]["parameters"]
    assert {"produce", "dataset", "train", "train-runpod", "render", "batch", "sweep-pods"} <= set(deployments)
    assert deployments["dataset"]["work_pool_name"] == "likeness-gpu"
    assert deployments["produce"]["work_pool_name"] == "likeness-cpu"
    schema = deployments["produce"]["parameter_openapi_schema"]["properties"]
    assert "tiny" in schema["profile"]["enum"] and schema["backend"]["enum"][0] == "local"
    assert "s3://" in schema["reference"]["description"]
    pools = {pool["name"]: pool for pool in api_post(studio.api, "/work_pools/filter", {})}
    assert pools["likeness-gpu"]["concurrency_limit"] is None  # one run per GPU worker: `--limit 1`


def test_a_produce_run_dispatches_each_stage_to_its_pool_and_pulls_the_outputs(studio, s3_server):
    studio.start_worker("cpu-machine", "likeness-cpu")
    studio.start_worker("gpu-machine-1", "likeness-gpu", "--limit", "1")
    out = studio.tmp / "out-ada"
    run = studio.likeness(
        "run", "produce", "-p", "name=Ada", "-p", "reference=drop/Ada.jpg", *SMALL, "--watch", "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Completed" in run.stderr and "render-character" in run.stderr
    parent_id = started_run(run.stderr)

    runs = studio.runs_under(parent_id)
    by_flow = {studio.flow_name(r): r for r in runs}
    assert STAGE_FLOWS | {"produce-character"} <= set(by_flow)
    assert studio.ran_on(parent_id) == ["cpu-machine"]
    for stage in STAGE_FLOWS:
        assert by_flow[stage]["work_pool_name"] == "likeness-gpu"
        assert studio.ran_on(by_flow[stage]["id"]) == ["gpu-machine-1"], stage
        assert by_flow[stage]["state"]["type"] == "COMPLETED"

    # The files came from S3 into the folder, the results and cache records are in S3 beside them.
    assert (out / "lora" / "Ada.safetensors").is_file() and (out / "dataset_contact_sheet.png").is_file()
    pulled = json.loads((out / "likeness.json").read_text())["last_run"]
    assert set(pulled["stage_seconds"]) == {"dataset", "training", "renders"}
    assert any(path.suffix == ".mp4" for path in (out / "renders").iterdir())
    client = s3_client(s3_server)
    names = [o.object_name for o in client.list_objects(BUCKET, prefix="studio/", recursive=True)]
    assert any(name.startswith("studio/prefect-results/") for name in names)
    lora_sha = hashlib.sha256((out / "lora" / "Ada.safetensors").read_bytes()).hexdigest()
    assert any(name.startswith(f"studio/sha256/{lora_sha}/") for name in names)

    summary = api_post(studio.api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["ada-summary"]}}})
    assert summary and f"likeness pull {parent_id}" in summary[0]["data"]


def test_work_done_on_one_gpu_machine_is_a_cache_hit_on_another(studio):
    studio.stop_worker("gpu-machine-1")
    studio.start_worker("gpu-machine-2", "likeness-gpu", "--limit", "1")
    run = studio.likeness(
        "run", "dataset", "-p", "name=Ada", "-p", f"reference=s3://{BUCKET}/studio/drop/Ada.jpg", *SMALL, "--watch"
    )
    assert run.returncode == 0, run.stderr[-4000:]
    run_id = started_run(run.stderr)
    assert studio.ran_on(run_id) == ["gpu-machine-2"]
    runs = studio.runs_under(run_id)
    tasks = api_post(studio.api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [r["id"] for r in runs]}}})
    # Not cached by design: reading the photo, and the task run that stands for the build-dataset subflow.
    stages = [task for task in tasks if not task["name"].startswith(("fetch-input-image", "build-dataset"))]
    assert stages and all(task["state"]["name"] == "Cached" for task in stages), {
        t["name"]: t["state"]["name"] for t in stages
    }


def test_bad_parameters_and_inputs_fail_early_and_clearly(studio):
    if not any(machine.startswith("gpu-machine") for machine in studio.workers):
        studio.start_worker("gpu-machine-2", "likeness-gpu", "--limit", "1")
    refused = studio.likeness("run", "produce", "-p", "name=Ada", "-p", "reference=x.jpg", "-p", "beyond_limits=maybe")
    assert refused.returncode == 2 and "'maybe' is not of type 'boolean'" in refused.stderr

    unknown = studio.likeness("run", "dataset", "-p", "name=Ada", "-p", "reference=x.jpg", "-p", "profile=huge")
    assert unknown.returncode == 2 and "profile" in unknown.stderr and "huge" in unknown.stderr

    with text_server() as url:
        not_image = studio.likeness("run", "dataset", "-p", "name=Ada", "-p", f"reference={url}", *SMALL, "--watch")
    assert not_image.returncode == 2
    assert f"reference {url}" in not_image.stderr and "Failed" in not_image.stderr

    # The production profile's weights are not on the GPU machine: the run fails once, before any task.
    no_weights = studio.likeness(
        "run", "dataset", "-p", "name=Ada", "-p", f"reference=s3://{BUCKET}/studio/drop/Ada.jpg",
        "-p", "profile=production", "--watch",
    )  # fmt: skip
    assert no_weights.returncode == 2, no_weights.stderr[-2000:]
    run_id = started_run(no_weights.stderr)
    [run] = api_post(studio.api, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    assert run["state"]["type"] == "FAILED" and run["run_count"] == 1
    assert "production" in run["state"]["message"]
    assert api_post(studio.api, "/task_runs/filter", {"task_runs": {"flow_run_id": {"any_": [run_id]}}}) == []


def test_the_inbox_and_a_batch_skip_what_is_produced_and_report_broken_rows(studio, s3_server):
    # Ada, dropped with these settings, was produced by the produce test: the inbox finds nothing new.
    inbox = studio.likeness("run", "inbox", "-p", "prefix=drop/", *SMALL, "--watch")
    assert inbox.returncode == 0, inbox.stderr[-3000:]
    rows = table(studio, "inbox-drop")
    assert [(row["name"], row["status"].split(" (")[0]) for row in rows] == [("Ada", "already produced")]

    manifest = (
        b'- {name: Ada, image: Ada.jpg, profile: tiny, set: ["dataset.variations=[front]"]}\n'
        b"- {name: Bob, image: nobody.jpg, profile: tiny}\n"
        b"- {image: Ada.jpg}\n"
    )
    # Beside Ada's photo in the store, so its first row is the produce run above; given as a store key.
    s3_client(s3_server).put_object(BUCKET, "studio/drop/m.yaml", io.BytesIO(manifest), len(manifest))
    batch = studio.likeness("run", "batch", "-p", "manifest=drop/m.yaml", "-p", "concurrency=2", "--watch")
    assert batch.returncode == 0, batch.stderr[-3000:]
    rows = table(studio, "batch-m")
    assert [row["row"] for row in rows] == [1, 2, 3]
    assert rows[0]["status"].startswith("already produced") and rows[0]["out"].startswith("likeness pull ")
    assert rows[1]["status"].startswith("failed") and "drop/nobody.jpg" in rows[1]["status"]
    assert rows[2]["status"] == "skipped: no name"


def test_a_gpu_worker_killed_mid_stage_leaves_a_rerun_that_redoes_only_that_stage(studio, s3_server):
    for machine in [m for m in studio.workers if m.startswith("gpu-machine")]:
        studio.stop_worker(machine)
    if "cpu-machine" not in studio.workers:
        studio.start_worker("cpu-machine", "likeness-cpu")
    studio.start_worker("gpu-machine-3", "likeness-gpu", "--limit", "1")
    # Long enough to be killed in: 300 steps of the tiny trainer (30-60 ms each), a checkpoint every 100; one still.
    kai = ["-p", "name=Kai", "-p", "reference=drop/Ada.jpg", *SMALL, "-p", "beyond_limits=true"]
    kai += ["-p", "overrides.train.steps=300", "-p", "overrides.train.checkpoint_every=100"]
    kai += ["-p", "overrides.render.video_prompts=[]"]
    started = studio.likeness("run", "produce", *kai)
    assert started.returncode == 0, started.stderr[-3000:]
    first = started_run(started.stderr)
    studio.wait_for_log("gpu-machine-3", "Kai:  40%|")  # past the first checkpoint
    studio.kill_worker("gpu-machine-3")

    # The person sees the stage hang, cancels the run and starts it again once a GPU machine is back.
    studio.set_state(first, "CANCELLING")
    studio.wait_for_run(first, "produce-character", "CANCELLED")
    studio.start_worker("gpu-machine-4", "likeness-gpu", "--limit", "1")
    rerun = studio.likeness("run", "produce", *kai, "--watch", "--out", str(studio.tmp / "out-kai"))
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    second = started_run(rerun.stderr)

    runs = {studio.flow_name(run): run for run in studio.runs_under(second)}
    assert studio.ran_on(runs["train-character"]["id"]) == ["gpu-machine-4"]
    states = {flow: studio.task_states_under(runs[flow]["id"]) for flow in STAGE_FLOWS}
    # Not cached by design: reading the photo, and the task run that stands for the build-dataset subflow.
    dataset = {name: state for name, state in states["produce-dataset"].items()
               if name not in ("fetch-input-image", "build-dataset")}  # fmt: skip
    assert dataset and all(names == {"Cached"} for names in dataset.values()), dataset
    assert states["train-character"]["fit-lora"] == {"Completed"}, states["train-character"]
    assert states["render-character"]["render-media"] == {"Completed"}

    # What the killed stage left and what the rerun made: each checkpoint once, under one content address.
    names = [o.object_name for o in s3_client(s3_server).list_objects(BUCKET, prefix="studio/", recursive=True)]
    checkpoints: dict[str, set[str]] = {}
    for name in names:
        if name.startswith("studio/sha256/") and name.rsplit("/", 1)[1].startswith("Kai_"):
            checkpoints.setdefault(name.rsplit("/", 1)[1], set()).add(name.split("/")[2])
    assert {"Kai_000000100.safetensors", "Kai_000000300.safetensors"} <= set(checkpoints)
    assert all(len(digests) == 1 for digests in checkpoints.values()), checkpoints
    assert not [name for name in names if name.endswith((".part", ".tmp")) or "/tmp" in name]


def table(studio: Machines, key: str) -> list[dict]:
    """The rows of the newest table artifact with this key."""
    query = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"}
    artifacts = api_post(studio.api, "/artifacts/filter", query)
    return json.loads(artifacts[0]["data"])


def started_run(said: str) -> str:
    """The flow run id that `likeness run` says it started."""
    found = re.search(r"^started \S+ run \S+ \(([0-9a-f-]{36})\)$", said, re.MULTILINE)
    assert found, said[-3000:]
    return found[1]


class _TextHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (the name http.server calls)
        body = b"this is not a photo"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class text_server:  # noqa: N801  (used as a context manager)
    """An HTTP server on loopback whose every URL answers with text."""

    def __enter__(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _TextHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/ada.jpg"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
