"""The work pools and deployments that `prefect.yaml` declares, against a real Prefect server."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml

from tests.conftest import cli_env
from tests.prefect_server import api_post

ROOT = Path(__file__).resolve().parents[1]


def test_every_entrypoint_is_a_flow():
    from prefect.flows import load_flow_from_entrypoint

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {}
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
        names[deployment["name"]] = flow.name
    assert names == {
        "produce": "produce-character",
        "dataset": "produce-dataset",
        "train": "train-character",
        "train-runpod": "train-character",
        "render": "render-character",
        "batch": "produce-batch",
        "inbox": "produce-inbox",
        "sweep-pods": "sweep-pods",
    }
    sweeper = next(d for d in config["deployments"] if d["name"] == "sweep-pods")
    assert sweeper["work_pool"]["name"] == "likeness-cpu" and sweeper["schedules"][0]["cron"]


def test_pools_and_deployments_register(prefect_api, tmp_path, models_dir):
    env = {**cli_env(tmp_path, models_dir, prefect_api), "LIKENESS_CODE_DIR": str(ROOT)}
    pools = subprocess.run(
        [sys.executable, "-m", "deployments.pools", "--gpu-slots", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pools.returncode == 0, pools.stderr
    assert "work pool ready: likeness-gpu" in pools.stdout
    prefect = str(Path(sys.executable).parent / "prefect")
    deploy = subprocess.run(
        [prefect, "--no-prompt", "deploy", "--all"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    pools = {pool["name"]: pool for pool in api_post(prefect_api, "/work_pools/filter", {})}
    assert pools["likeness-gpu"]["concurrency_limit"] is None
    assert pools["likeness-cpu"]["type"] == "process"
    deployments = {d["name"]: d for d in api_post(prefect_api, "/deployments/filter", {})}
    assert {"produce", "dataset", "train", "render"} <= set(deployments)
    assert deployments["train"]["work_pool_name"] == "likeness-gpu"
    assert deployments["train-runpod"]["work_pool_name"] == "likeness-cpu"
    assert deployments["train-runpod"]["parameters"] == {"profile": "production", "backend": "runpod-native"}
    assert deployments["produce"]["parameters"] == {"profile": "production"}
    limits = api_post(prefect_api, "/concurrency_limits/filter", {})
    assert {(limit["tag"], limit["concurrency_limit"]) for limit in limits} >= {("gpu", 2)}
    # The server is shared by the suite: other tests' gpu-tagged tasks must not queue on this limit.
    request = urllib.request.Request(f"{prefect_api}/concurrency_limits/tag/gpu", method="DELETE")
    urllib.request.urlopen(request, timeout=30).close()


def test_the_pools_doctor_checks_are_the_pools_deployed_to():
    from deployments.pools import POOLS
    from likeness.settings import Settings

    assert Settings().work_pools == tuple(POOLS)
