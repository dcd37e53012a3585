"""`likeness doctor`: each check reported, failures failing the command, nothing secret in what it prints."""

from __future__ import annotations

import json
import re
import urllib.request

from typer.testing import CliRunner

from likeness.cli.app import app
from likeness.settings import get_settings
from tests.fake_runpod import fake_runpod


def doctor(monkeypatch, **env: str):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    from likeness.storage import artifacts

    artifacts.get_store.cache_clear()
    return CliRunner().invoke(app, ["doctor"], terminal_width=200)


def rows(output: str) -> dict[str, str]:
    """check name -> its mark and detail."""
    found = {}
    for line in output.splitlines():
        mark, name, detail = line[:6].strip(), line[7:27].strip(), line[28:]
        found[name] = f"{mark} {detail}"
    return found


def test_a_machine_with_only_a_local_store_is_fine_and_says_what_does_not_apply(likeness_env, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("LIKENESS_RUNPOD_API_KEY", raising=False)
    result = doctor(monkeypatch)
    assert result.exit_code == 0, result.output
    found = rows(result.output)
    assert found["store"].startswith("ok file://") and "written, read back and removed" in found["store"]
    assert found["GPU"].startswith("n/a no CUDA GPU")
    assert found["Prefect API"].startswith("n/a PREFECT_API_URL is not set")
    assert found["RunPod key"].startswith("n/a LIKENESS_RUNPOD_API_KEY is not set")


def test_pools_without_workers_a_wrong_key_and_a_dead_store_fail_it(likeness_env, monkeypatch, prefect_api):
    request = urllib.request.Request(
        f"{prefect_api}/work_pools/",
        data=json.dumps({"name": "doctor-pool", "type": "process"}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=30).close()
    with fake_runpod(api_key="rp-right-key") as api:
        result = doctor(
            monkeypatch,
            PREFECT_API_URL=prefect_api,
            LIKENESS_WORK_POOLS='["doctor-pool", "no-such-pool"]',
            LIKENESS_RUNPOD_API_KEY="rp-wrong-key",
            RUNPOD_API_BASE_URL=api.url,
            LIKENESS_STORE_URI="s3://doctor/bucket",
            LIKENESS_S3_ENDPOINT="http://127.0.0.1:9",
            LIKENESS_S3_ACCESS_KEY="doctor-access",
            LIKENESS_S3_SECRET_KEY="doctor-secret-321",
        )
        assert result.exit_code == 1, result.output
        found = rows(result.output)
        assert found["Prefect API"].startswith("ok") and "healthy" in found["Prefect API"]
        assert found["pool doctor-pool"].startswith("failed no worker online")
        assert found["pool no-such-pool"].startswith("failed does not exist")
        assert found["RunPod key"].startswith("failed")
        assert found["store"].startswith("failed") and "cannot reach http://127.0.0.1:9" in found["store"]
        for secret in ("rp-wrong-key", "doctor-secret-321"):
            assert secret not in result.output
        right = doctor(monkeypatch, LIKENESS_RUNPOD_API_KEY="rp-right-key")
        assert rows(right.output)["RunPod key"] == "ok accepted by the RunPod API"


def test_each_pod_of_ours_is_listed_with_its_age_and_its_jobs_heartbeat_age(likeness_env, monkeypatch):
    import time

    from likeness.runpod.jobs import job_prefix, new_job_id, pod_name
    from likeness.runpod.pods import PodRequest, RunPodClient
    from likeness.storage import artifacts

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with fake_runpod(api_key="rp-right-key") as api:
        monkeypatch.setenv("RUNPOD_API_BASE_URL", api.url)
        client = RunPodClient("rp-right-key")
        jobs = {what: new_job_id() for what in ("alive", "orphan", "elsewhere")}
        pods = {
            what: client.start_pod(
                PodRequest(name=pod_name(job), image="img", gpu_types=["NVIDIA H100 80GB HBM3"], docker_args="sleep 60")
            ).id
            for what, job in jobs.items()
        }
        client.start_pod(PodRequest(name="jupyter", image="img", gpu_types=["NVIDIA H100 80GB HBM3"]))
        store = artifacts.get_store()
        for what, age in (("alive", 5), ("orphan", 3600)):
            beat = {"pod_id": pods[what], "time": time.time() - age, "done": False, "flow_run_id": None}
            store.put_bytes(f"{job_prefix(jobs[what])}heartbeat.json", json.dumps(beat).encode())
        result = doctor(monkeypatch, LIKENESS_RUNPOD_API_KEY="rp-right-key")
        found = rows(result.output)
        assert result.exit_code == 1, result.output  # a pod that should have ended is a finding
        alive, orphan, elsewhere = (found[f"pod {pods[what]}"] for what in ("alive", "orphan", "elsewhere"))
        assert alive.startswith(f"ok job {jobs['alive'][:8]}, up ") and re.search(r"heartbeat \d+ s ago", alive)
        assert orphan.startswith("failed") and "heartbeat 60 min ago; should have ended" in orphan
        assert re.search(r"heartbeat stopped 36\d\d s ago", orphan)
        assert elsewhere.startswith("n/a") and "no heartbeat in file://" in elsewhere
        assert len([name for name in found if name.startswith("pod ")]) == 3  # not the one that is not ours
        assert "rp-right-key" not in result.output
        for pod in api.pods():
            client.terminate(pod.id)
    monkeypatch.delenv("LIKENESS_RUNPOD_API_KEY")
    without = doctor(monkeypatch)
    assert rows(without.output)["RunPod pods"].startswith("n/a LIKENESS_RUNPOD_API_KEY is not set")
