"""The names a RunPod training job goes by: its id, its pod's name, its folder in the store.

The driver (`likeness.training.remote`) names each pod after its job and keeps the job's files under one prefix;
the sweeper (`likeness.runpod.sweep`) reads a pod's name back to the job id and finds that job's heartbeat there.

    job_id = new_job_id()
    job_id_of(pod_name(job_id)) == job_id      # the pod "likeness-<job id>"
    job_prefix(job_id)                         # "runpod-jobs/<job id>/"
"""

from __future__ import annotations

import re
import uuid

JOBS_PREFIX = "runpod-jobs/"
POD_NAME_PREFIX = "likeness-"


def new_job_id() -> str:
    """A fresh job id: 32 hex digits."""
    return uuid.uuid4().hex


def job_prefix(job_id: str) -> str:
    return f"{JOBS_PREFIX}{job_id}/"


def pod_name(job_id: str) -> str:
    """Our pods' names carry the job id, so the sweeper finds each one's heartbeat."""
    return f"{POD_NAME_PREFIX}{job_id}"


def job_id_of(name: str) -> str | None:
    match = re.fullmatch(rf"{POD_NAME_PREFIX}([0-9a-f]{{32}})", name)
    return match[1] if match else None
