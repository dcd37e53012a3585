"""`likeness doctor`: whether this machine can run Likeness, each part checked and reported, nothing secret shown.

The GPU, the artifact store (a small object written, read back and removed), the Prefect API, the workers online
in each work pool, the RunPod key (one authenticated query), and each pod of ours on the RunPod account: its age and
its job's heartbeat age in this store, failing when the pod should have ended (the sweeper would terminate it). A
check that does not apply here (no Prefect API set, no RunPod key) is reported as such, not as a failure.

    for check in run_checks(get_settings(), get_store, pools=["likeness-cpu", "likeness-gpu"]):
        print(check.name, check.ok, check.detail)
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Sequence
from typing import NamedTuple

import httpx

from likeness.settings import Settings
from likeness.storage.store import ArtifactStore

TIMEOUT_S = 10.0


class Check(NamedTuple):
    """One check: `ok` is True, False, or None where it does not apply here."""

    name: str
    ok: bool | None
    detail: str


def check_gpu() -> Check:
    """Whether torch sees a CUDA GPU, and which."""
    import torch

    if not torch.cuda.is_available():
        return Check("GPU", None, "no CUDA GPU (torch.cuda.is_available() is False): the tiny profile runs here")
    names = [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]
    return Check("GPU", True, ", ".join(names))


def check_store(open_store: Callable[[], ArtifactStore]) -> Check:
    """Open the artifact store, and write, read back and remove a small object in it."""
    key = f"doctor/probe-{uuid.uuid4().hex}"
    data = os.urandom(64)
    try:
        store = open_store()
    except Exception as exc:  # every way a store can fail to open is the finding
        return Check("store", False, str(exc))
    try:
        store.put_bytes(key, data)
        try:
            if store.get_bytes(key) != data:
                return Check("store", False, f"{store.uri}: an object read back differs from what was written")
        finally:
            store.delete(key)
    except Exception as exc:  # every way a store can fail is the finding
        return Check("store", False, f"{store.uri}: {type(exc).__name__}: {exc}")
    return Check("store", True, f"{store.uri}: written, read back and removed")


def check_prefect(api_url: str | None) -> Check:
    """Whether the Prefect API answers its health check."""
    if not api_url:
        return Check("Prefect API", None, "PREFECT_API_URL is not set: each run starts a temporary server")
    try:
        response = httpx.get(f"{api_url.rstrip('/')}/health", timeout=TIMEOUT_S)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        return Check("Prefect API", False, f"{api_url}: {type(exc).__name__}: {exc}")
    return Check("Prefect API", True, f"{api_url}: healthy")


def check_workers(api_url: str | None, pools: Sequence[str]) -> list[Check]:
    """How many workers are online in each work pool."""
    if not api_url:
        return [Check(f"pool {pool}", None, "no Prefect API to ask") for pool in pools]
    checks = []
    for pool in pools:
        try:
            response = httpx.post(f"{api_url.rstrip('/')}/work_pools/{pool}/workers/filter", json={}, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            checks.append(Check(f"pool {pool}", False, f"{type(exc).__name__}: {exc}"))
            continue
        if response.status_code == 404:
            checks.append(Check(f"pool {pool}", False, "does not exist: run `python -m deployments.pools`"))
            continue
        online = [worker["name"] for worker in response.json() if worker.get("status") == "ONLINE"]
        if online:
            checks.append(Check(f"pool {pool}", True, f"{len(online)} worker(s) online: {', '.join(online)}"))
        else:
            checks.append(
                Check(f"pool {pool}", False, f"no worker online: start one with `prefect worker start --pool {pool}`")
            )
    return checks


def check_runpod(settings: Settings) -> Check:
    """Whether RunPod takes the key in the settings (never shown)."""
    from likeness.runpod.pods import KEY_VARIABLE, RunPodClient, RunPodError

    if settings.runpod_api_key is None:
        return Check("RunPod key", None, f"{KEY_VARIABLE} is not set: only the runpod-* backends need it")
    try:
        RunPodClient(settings.runpod_api_key).check_key()
    except RunPodError as exc:
        return Check("RunPod key", False, str(exc))
    return Check("RunPod key", True, "accepted by the RunPod API")


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def check_runpod_pods(settings: Settings, open_store: Callable[[], ArtifactStore]) -> list[Check]:
    """A line per pod of ours on the RunPod account: how old it is, how old its job's heartbeat is in this store,
    and whether it should still be running (failed when the sweeper would terminate it, with why)."""
    from likeness.config import PodConfig
    from likeness.runpod.jobs import job_id_of
    from likeness.runpod.pods import KEY_VARIABLE, RunPodClient, RunPodError
    from likeness.runpod.sweep import ORPHAN_AFTER_S, read_heartbeat, why_sweep

    if settings.runpod_api_key is None:
        return [Check("RunPod pods", None, f"{KEY_VARIABLE} is not set: no pods to look for")]
    try:
        pods = RunPodClient(settings.runpod_api_key).pods()
    except RunPodError as exc:
        return [Check("RunPod pods", False, f"could not list the account's pods: {exc}")]
    if not pods:
        return [Check("RunPod pods", True, "none of ours on the account")]
    try:
        store: ArtifactStore | None = open_store()
    except Exception:  # the store check reports why
        store = None
    now = time.time()
    checks = []
    for pod in pods:
        state = f"up {_duration(pod.uptime_s)}" if pod.is_running else f"{pod.desired_status}, not running"
        job_id = job_id_of(pod.name)
        head = f"job {job_id[:8]}, {state}" if job_id else f"{pod.name}, {state}"
        if store is None or job_id is None:
            why = "the store did not open" if store is None else "no job id in its name"
            checks.append(Check(f"pod {pod.id}", None, f"{head}; its heartbeat is unknown ({why})"))
            continue
        beat = read_heartbeat(store, job_id)
        if beat is None:
            detail = f"{head}; no heartbeat in {store.uri}: another data folder's job, or one just starting"
            checks.append(Check(f"pod {pod.id}", None, detail))
            continue
        heard = f"heartbeat {_duration(now - beat['time'])} ago"
        reason = why_sweep(pod, store, PodConfig().ttl_hours, ORPHAN_AFTER_S, now=now, only_this_store=True)
        if reason:
            checks.append(Check(f"pod {pod.id}", False, f"{head}, {heard}; should have ended: {reason}"))
        else:
            checks.append(Check(f"pod {pod.id}", True, f"{head}, {heard}; its driver is alive, training"))
    return checks


def run_checks(settings: Settings, open_store: Callable[[], ArtifactStore], pools: Sequence[str]) -> list[Check]:
    """Every check, in the order a person sets things up."""
    api_url = os.environ.get("PREFECT_API_URL")
    return [
        check_gpu(),
        check_store(open_store),
        check_prefect(api_url),
        *check_workers(api_url, pools),
        check_runpod(settings),
        *check_runpod_pods(settings, open_store),
    ]
