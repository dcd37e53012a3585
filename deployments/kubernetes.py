"""The GPU work pool as a Kubernetes work pool: each flow run becomes a Job whose pod asks for GPUs.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.kubernetes \\
        --image registry.example.com/likeness-worker:0.1.0 --gpus 1 --memory 64Gi \\
        --node-selector nvidia.com/gpu.present=true

or from Python:

    from deployments.kubernetes import ensure_kubernetes_pool
    ensure_kubernetes_pool("registry.example.com/likeness-worker:0.1.0", gpus=2, memory="128Gi")

The template is prefect-kubernetes' own default with GPUs, memory, a node selector, a GPU toleration and the
image added; `gpus`, `node_selector`, `image`, `memory_request`/`memory_limit` and `env` are template variables,
so a deployment (`job_variables`) or the pool's page in the UI can change them.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.exceptions import ObjectNotFound
from prefect_kubernetes.worker import KubernetesWorker

from deployments.pools import POOLS

GPU_POOL_K8S = "likeness-gpu-k8s"
GPU_RESOURCE = "nvidia.com/gpu"
# The label NVIDIA's GPU feature discovery (GPU operator) puts on every node with a GPU.
DEFAULT_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
# The process GPU pool's environment, so a stage behaves the same on either pool.
GPU_ENV: dict[str, str] = POOLS["likeness-gpu"]["env"]
DESCRIPTION = "Likeness: model stages as Kubernetes Jobs (one flow run per pod, GPUs per pod)"


def kubernetes_base_job_template(
    image: str,
    gpus: int = 1,
    memory: str = "64Gi",
    node_selector: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """prefect-kubernetes' default base job template, with the pod asking for `gpus` GPUs and `memory` on a GPU node.

    `env` is added to the GPU pool's environment (`PYTORCH_CUDA_ALLOC_CONF`); `node_selector` replaces
    the default `nvidia.com/gpu.present=true`.
    """
    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    properties = template["variables"]["properties"]
    properties["image"]["default"] = image
    # Request equal to limit: the node reserves it all, so a stage is not evicted for using more than it asked.
    properties["memory_request"]["default"] = memory
    properties["memory_limit"]["default"] = memory
    properties["env"]["default"] = {**GPU_ENV, **(env or {})}
    properties["gpus"] = {
        "title": "GPUs",
        "description": f"The number of GPUs (`{GPU_RESOURCE}`) each flow run's pod requests.",
        "type": "integer",
        "minimum": 0,
        "default": gpus,
    }
    properties["node_selector"] = {
        "title": "Node Selector",
        "description": "Node labels a flow run's pod must be scheduled on (the GPU nodes).",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": dict(DEFAULT_NODE_SELECTOR if node_selector is None else node_selector),
    }

    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    pod["nodeSelector"] = "{{ node_selector }}"
    # GPU node pools are usually tainted so that only pods that ask for GPUs land there.
    pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    # The worker reads and writes the first container (env, image, args): it is the flow run's.
    resources = pod["containers"][0]["resources"]
    # Extended resources cannot be overcommitted: Kubernetes wants the request equal to the limit.
    resources["limits"][GPU_RESOURCE] = "{{ gpus }}"
    resources["requests"][GPU_RESOURCE] = "{{ gpus }}"
    return template


def ensure_kubernetes_pool(
    image: str,
    gpus: int = 1,
    memory: str = "64Gi",
    node_selector: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """Create the Kubernetes GPU pool (or bring an existing one up to date); returns its name."""
    template = kubernetes_base_job_template(image, gpus=gpus, memory=memory, node_selector=node_selector, env=env)
    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(GPU_POOL_K8S)
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=GPU_POOL_K8S, type="kubernetes", description=DESCRIPTION, base_job_template=template
                )
            )
        else:
            # A pool's type cannot be changed by an update: a process pool of this name would keep its type.
            if pool.type != "kubernetes":
                raise ValueError(f"work pool {GPU_POOL_K8S} exists with type {pool.type!r}, not 'kubernetes'")
            # Concurrency is left as it is: the cluster's GPUs bound how many pods run.
            client.update_work_pool(GPU_POOL_K8S, WorkPoolUpdate(description=DESCRIPTION, base_job_template=template))
    return GPU_POOL_K8S


def _pairs(parser: argparse.ArgumentParser, values: list[str] | None, flag: str) -> dict[str, str] | None:
    if values is None:
        return None
    pairs = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            parser.error(f"{flag} takes KEY=VALUE, not {value!r}")
        pairs[key] = item
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="the job image (built from deployments/Dockerfile)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per flow run's pod (default 1)")
    parser.add_argument("--memory", default="64Gi", help="memory request and limit per pod (default 64Gi)")
    parser.add_argument(
        "--node-selector",
        action="append",
        metavar="KEY=VALUE",
        help="a node label the pods need (repeatable; default nvidia.com/gpu.present=true)",
    )
    parser.add_argument("--env", action="append", metavar="KEY=VALUE", help="an environment variable (repeatable)")
    args = parser.parse_args()
    name = ensure_kubernetes_pool(
        args.image,
        gpus=args.gpus,
        memory=args.memory,
        node_selector=_pairs(parser, args.node_selector, "--node-selector"),
        env=_pairs(parser, args.env, "--env"),
    )
    print(f"work pool ready: {name}")


if __name__ == "__main__":
    main()
