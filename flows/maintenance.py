"""Maintenance flows: `sweep-pods` terminates RunPod pods of ours that outlived their job (deployed on a schedule)."""

from __future__ import annotations

from prefect import flow, task

from likeness.runpod.sweep import SweptPod, sweep_pods
from likeness.storage.artifacts import get_store
from likeness.training.remote import runpod_client

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "CRASHED")


def flow_run_has_ended(flow_run_id: str) -> bool:
    """Whether the Prefect flow run that started a pod is over (a run that no longer exists is over too)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(flow_run_id).state
        except ObjectNotFound:
            return True
    return state is not None and state.type.value in TERMINAL


@task(name="sweep-runpod", retries=2, retry_delay_seconds=30)
def sweep(ttl_hours: float, stale_after_s: float) -> list[SweptPod]:
    """Terminate our pods whose job is over, whose driver died, or which passed the TTL."""
    return sweep_pods(runpod_client(), get_store(), ttl_hours, stale_after_s, flow_run_has_ended)


@flow(name="sweep-pods", log_prints=True)
def sweep_pods_flow(ttl_hours: float = 6.0, stale_after_s: float = 900.0) -> list[SweptPod]:
    """Terminate RunPod pods left behind by a killed driver, a finished job or the TTL.

    Args:
        ttl_hours: A pod of ours older than this many hours is terminated, whatever its job says.
        stale_after_s: A pod whose driver's heartbeat is older than this many seconds is terminated.
    """
    swept = sweep(ttl_hours, stale_after_s)
    for pod in swept:
        print(f"terminated {pod.pod_id} ({pod.name}): {pod.reason}")
    print(f"{len(swept)} pod(s) terminated")
    return swept
