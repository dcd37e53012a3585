"""The sweeper: terminate pods of ours that outlived their job, so no pod is ever left running (and billing).

A pod is ours when its name is `likeness-<job id>`. It is terminated when its driver's heartbeat in the store is
missing (past a grace period), says the job is done, or stopped beating (the driver's process was killed), when
the driver's Prefect flow run has ended, or when the pod is older than the TTL, whatever its job says.

Each pod also ends itself (`likeness.training.pod.Watchdog`); the sweeper is the backstop. `only_this_store` judges
only the pods of jobs whose heartbeat is in this store (a job sweeps these before it starts its own pod): a pod
without one belongs to another store's job, or its driver has not written yet.

    swept = sweep_pods(client, store, ttl_hours=6, stale_after_s=900)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from likeness.runpod.jobs import POD_NAME_PREFIX, job_id_of, job_prefix
from likeness.runpod.pods import PodStatus, RunPodClient
from likeness.storage.store import ArtifactStore, StoreError

log = logging.getLogger(__name__)
# A pod of this store's jobs is swept before a job starts its own (and flagged by `likeness doctor`) once its driver's
# heartbeat is this old: the sweep-pods flow's bound, generous for the clocks of two machines that share a store.
ORPHAN_AFTER_S = 900.0


class SweptPod(BaseModel):
    """A pod the sweeper terminated, and why."""

    model_config = ConfigDict(frozen=True)

    pod_id: str
    name: str
    reason: str


def read_heartbeat(store: ArtifactStore, job_id: str) -> dict | None:
    """The job's driver heartbeat in this store, None if there is none or it cannot be read."""
    try:  # a missing heartbeat is a MissingObject
        beat = json.loads(store.get_bytes(f"{job_prefix(job_id)}heartbeat.json"))
    except (StoreError, ValueError):
        return None
    return beat if isinstance(beat, dict) and isinstance(beat.get("time"), int | float) else None


def why_sweep(
    pod: PodStatus,
    store: ArtifactStore,
    ttl_hours: float,
    stale_after_s: float,
    run_has_ended: Callable[[str], bool] | None = None,
    now: float | None = None,
    only_this_store: bool = False,
) -> str | None:
    """Why the pod should go, or None while its job is alive (or, `only_this_store`, it is not this store's)."""
    now = now or time.time()
    job_id = job_id_of(pod.name)
    beat = read_heartbeat(store, job_id) if job_id else None
    if only_this_store and beat is None:
        return None
    if pod.uptime_s is not None and pod.uptime_s > ttl_hours * 3600:
        return f"older than the {ttl_hours:g} h TTL"
    if job_id is None:
        return "not started by a Likeness job (no job id in its name)"
    if beat is None:
        # A driver writes its first beat before it starts the pod (older ones right after): give it time.
        age = pod.uptime_s or 0.0
        return f"no heartbeat from its driver after {age:.0f} s" if age > stale_after_s else None
    if beat.get("done"):
        return "its job has finished"
    if now - beat["time"] > stale_after_s:
        return f"its driver's heartbeat stopped {now - beat['time']:.0f} s ago (the driver's process ended)"
    if run_has_ended and beat.get("flow_run_id") and run_has_ended(beat["flow_run_id"]):
        return f"its flow run {beat['flow_run_id']} has ended"
    return None


def sweep_pods(
    client: RunPodClient,
    store: ArtifactStore,
    ttl_hours: float,
    stale_after_s: float,
    run_has_ended: Callable[[str], bool] | None = None,
    only_this_store: bool = False,
) -> list[SweptPod]:
    """Terminate every pod of ours that `why_sweep` gives a reason for; the pods terminated."""
    swept = []
    for pod in client.pods(name_prefix=POD_NAME_PREFIX):
        reason = why_sweep(pod, store, ttl_hours, stale_after_s, run_has_ended, only_this_store=only_this_store)
        if reason:
            log.warning("terminating pod %s (%s): %s", pod.id, pod.name, reason)
            client.terminate(pod.id)
            swept.append(SweptPod(pod_id=pod.id, name=pod.name, reason=reason))
    return swept
