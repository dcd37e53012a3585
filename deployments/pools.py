"""Create or update the work pools that `prefect.yaml` deploys to, and the GPU concurrency limit.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.pools --gpu-slots 2

`likeness-cpu` runs the parent flow and anything that only waits on others (RunPod drivers);
`likeness-gpu` runs the model stages, one flow run per GPU worker (`prefect worker start --limit 1`).
Tasks tagged `gpu` share a global limit of `--gpu-slots` runs at once (one per GPU), so a burst of
batch runs queues instead of running out of GPU memory.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect.workers.process import ProcessWorker

POOLS: dict[str, dict[str, Any]] = {
    "likeness-cpu": {"description": "Likeness: orchestration and training drivers", "concurrency": 8, "env": {}},
    "likeness-gpu": {
        "description": "Likeness: model stages (start each GPU worker with --limit 1: one stage run per GPU)",
        # Per worker, not per pool: the pool takes as many stage runs at once as it has GPU workers.
        "concurrency": None,
        "env": {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"},
    },
}
GPU_TAG = "gpu"


def base_job_template(env: dict[str, str]) -> dict[str, Any]:
    """The process worker's default template with `env` as the default environment of each run."""
    template = copy.deepcopy(ProcessWorker.get_default_base_job_template())
    template["variables"]["properties"]["env"]["default"] = env
    return template


def ensure_pools(gpu_slots: int = 1) -> list[str]:
    """Create the pools (or bring existing ones up to date); returns their names."""
    with get_client(sync_client=True) as client:
        for name, spec in POOLS.items():
            template = base_job_template(spec["env"])
            try:
                client.read_work_pool(name)
            except ObjectNotFound:
                client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type="process",
                        description=spec["description"],
                        base_job_template=template,
                        concurrency_limit=spec["concurrency"],
                    )
                )
            else:
                client.update_work_pool(
                    name,
                    WorkPoolUpdate(
                        description=spec["description"],
                        base_job_template=template,
                        concurrency_limit=spec["concurrency"],
                    ),
                )
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpu_slots)
    return list(POOLS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-slots", type=int, default=1, help="GPU task runs allowed at once, all workers together")
    args = parser.parse_args()
    for name in ensure_pools(args.gpu_slots):
        print(f"work pool ready: {name}")


if __name__ == "__main__":
    main()
