"""The Kubernetes GPU pool: prefect-kubernetes' template kept, a Job the Kubernetes schemas accept, GPUs asked for."""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate.utils import latest_version
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.schema_tools import ValidationError as JobVariablesError
from prefect.utilities.schema_tools import validate as validate_job_variables
from prefect.utilities.templating import apply_values
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from deployments import kubernetes
from deployments.kubernetes import (
    GPU_POOL_K8S,
    GPU_RESOURCE,
    ensure_kubernetes_pool,
    kubernetes_base_job_template,
)
from deployments.pools import POOLS

IMAGE = "registry.example.com/likeness-worker:0.1.0"
# The newest Kubernetes whose schemas kubernetes-validate ships (1.37 with kubernetes-validate 1.37.0).
K8S_VERSION = latest_version()
# prefect-kubernetes 0.8.0 puts these Job fields in the pod spec and its worker refuses a manifest without them
# there; the API server drops them (unknown fields) unless asked for strict field validation, which it is not.
WORKER_POD_FIELDS = ("completions", "parallelism")
# Kubernetes' resource.Quantity grammar: the schemas only say "string or number".
QUANTITY = re.compile(
    r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?(\d+(\.\d*)?|\.\d+))?$",
)


def job_configuration(template: dict[str, Any], **values: Any) -> KubernetesWorkerJobConfiguration:
    """The worker's configuration for `values` over the template's defaults, as `from_template_and_values` builds
    it, minus block and variable references (none here), which need a Prefect API."""
    defaults = {
        name: spec["default"]
        for name, spec in template["variables"]["properties"].items()
        if spec.get("default") is not None
    }
    populated = apply_values(copy.deepcopy(template["job_configuration"]), {**defaults, **values})
    return KubernetesWorkerJobConfiguration(**populated)


def render(template: dict[str, Any], **values: Any) -> dict[str, Any]:
    """The Job manifest the worker would submit for a flow run (env as a list, labels, command, name)."""
    configuration = job_configuration(template, **values)
    configuration.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="gentle-otter"))
    return configuration.job_manifest


def without_worker_pod_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = copy.deepcopy(manifest)
    pod = manifest["spec"]["template"]["spec"]
    for field in WORKER_POD_FIELDS:
        pod.pop(field)
    return manifest


def validate(manifest: dict[str, Any]) -> None:
    """Both schema flavours; strict (unknown fields refused) after the fields the worker insists on are taken out."""
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=False)
    kubernetes_validate.validate(without_worker_pod_fields(manifest), K8S_VERSION, strict=True)


def leaves(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, (*path, index))
    else:
        yield path, value


def at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]


def test_the_template_keeps_every_variable_and_setting_of_prefect_kubernetes_default():
    default = KubernetesWorker.get_default_base_job_template()
    ours = kubernetes_base_job_template(IMAGE)

    # Variables: all still there, same types and descriptions; only defaults may differ.
    for name, spec in default["variables"]["properties"].items():
        mine = ours["variables"]["properties"][name]
        assert {k: v for k, v in mine.items() if k != "default"} == {k: v for k, v in spec.items() if k != "default"}
    assert {k: v for k, v in ours["variables"].items() if k != "properties"} == {
        k: v for k, v in default["variables"].items() if k != "properties"
    }
    assert set(ours["variables"]["properties"]) - set(default["variables"]["properties"]) == {"gpus", "node_selector"}

    # Job configuration: every key and placeholder the worker fills, down to each leaf of the manifest.
    assert set(ours["job_configuration"]) == set(default["job_configuration"])
    for path, value in leaves(default["job_configuration"]):
        assert at(ours["job_configuration"], path) == value, path


def test_the_defaults_render_to_a_job_the_kubernetes_schemas_accept():
    manifest = render(kubernetes_base_job_template(IMAGE))
    validate(manifest)


@pytest.mark.parametrize(
    ("arguments", "job_variables"),
    [
        (
            {"gpus": 8, "memory": "900Gi", "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h200-141gb"}},
            {},
        ),
        ({"node_selector": {}}, {"gpus": 0, "memory_request": "16Gi", "cpu_request": "4", "namespace": "likeness"}),
        (
            {},
            {"gpus": 2, "node_selector": {"node.kubernetes.io/instance-type": "p5.48xlarge"}, "finished_job_ttl": 600},
        ),
    ],
)
def test_other_sizes_and_a_deployments_job_variables_render_valid_jobs(arguments, job_variables):
    template = kubernetes_base_job_template(IMAGE, **arguments)
    validate_job_variables(job_variables, template["variables"], raise_on_error=True)
    validate(render(template, **job_variables))


def test_the_pod_asks_for_the_gpus_and_memory_on_a_gpu_node_with_the_image():
    selector = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    template = kubernetes_base_job_template(IMAGE, gpus=2, memory="80Gi", node_selector=selector, env={"A": "b"})
    manifest = render(template)
    job = container(manifest)
    for side in ("limits", "requests"):
        assert job["resources"][side] == {GPU_RESOURCE: 2, "memory": "80Gi"}
        assert QUANTITY.match(str(job["resources"][side][GPU_RESOURCE]))
        assert QUANTITY.match(job["resources"][side]["memory"])
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == selector
    assert {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert job["image"] == IMAGE
    env = {item["name"]: item["value"] for item in job["env"]}
    assert env["PYTORCH_CUDA_ALLOC_CONF"] == POOLS["likeness-gpu"]["env"]["PYTORCH_CUDA_ALLOC_CONF"]
    assert env["A"] == "b"
    assert job["args"] == ["prefect", "flow-run", "execute"]

    # The default node selector is the GPU nodes'; a deployment changes the size per run.
    default = render(kubernetes_base_job_template(IMAGE))
    assert default["spec"]["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container(default)["resources"]["limits"] == {GPU_RESOURCE: 1, "memory": "64Gi"}
    bigger = container(render(template, gpus=4, memory_limit="160Gi", image="other/image:1"))
    assert bigger["resources"]["limits"] == {GPU_RESOURCE: 4, "memory": "160Gi"}
    assert bigger["image"] == "other/image:1"


def _misspelt_field(manifest: dict[str, Any]) -> None:
    pod = manifest["spec"]["template"]["spec"]
    pod["nodeSelecter"] = pod.pop("nodeSelector")


def _gpus_as_a_flag(manifest: dict[str, Any]) -> None:
    container(manifest)["resources"]["limits"][GPU_RESOURCE] = True


def _selector_value_not_a_string(manifest: dict[str, Any]) -> None:
    manifest["spec"]["template"]["spec"]["nodeSelector"] = {"nvidia.com/gpu.count": 8}


def _container_without_a_name(manifest: dict[str, Any]) -> None:
    del container(manifest)["name"]


@pytest.mark.parametrize(
    "breakage", [_misspelt_field, _gpus_as_a_flag, _selector_value_not_a_string, _container_without_a_name]
)
def test_the_validator_refuses_a_broken_job(breakage):
    manifest = without_worker_pod_fields(render(kubernetes_base_job_template(IMAGE)))
    breakage(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def test_a_gpu_count_that_is_not_a_number_is_refused_by_the_pool_not_by_the_schemas():
    template = kubernetes_base_job_template(IMAGE)
    # The schemas take any string as a quantity, so the Job schema alone would pass "one" on to the cluster...
    manifest = without_worker_pod_fields(render(template))
    container(manifest)["resources"]["limits"][GPU_RESOURCE] = "one"
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    assert not QUANTITY.match("one")
    # ...which is why `gpus` is an integer variable: Prefect checks job variables against it.
    with pytest.raises(JobVariablesError):
        validate_job_variables({"gpus": "one"}, template["variables"], raise_on_error=True)
    with pytest.raises(JobVariablesError):
        validate_job_variables({"gpus": -1}, template["variables"], raise_on_error=True)


def test_prefect_kubernetes_puts_job_fields_in_the_pod_spec():
    # If this fails, prefect-kubernetes fixed its template: drop WORKER_POD_FIELDS and validate as it is.
    template = kubernetes_base_job_template(IMAGE)
    with pytest.raises(kubernetes_validate.ValidationError, match="'completions', 'parallelism' were unexpected"):
        kubernetes_validate.validate(render(template), K8S_VERSION, strict=True)
    # ...and moving them out is not an option: the worker refuses such a template.
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    for field in WORKER_POD_FIELDS:
        del pod[field]
    with pytest.raises(ValueError, match="missing required attributes"):
        job_configuration(template)


def test_ensure_kubernetes_pool_creates_then_updates_the_pool(prefect_api, monkeypatch):
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        assert ensure_kubernetes_pool(IMAGE) == GPU_POOL_K8S
        assert ensure_kubernetes_pool(IMAGE) == GPU_POOL_K8S
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(GPU_POOL_K8S)
            assert pool.type == "kubernetes"
            assert pool.concurrency_limit is None
            assert pool.base_job_template == kubernetes_base_job_template(IMAGE)

        ensure_kubernetes_pool(IMAGE, gpus=4, memory="128Gi", node_selector={"gpu": "h200"})
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(GPU_POOL_K8S)
            assert [p.name for p in client.read_work_pools()].count(GPU_POOL_K8S) == 1
        template = kubernetes_base_job_template(IMAGE, gpus=4, memory="128Gi", node_selector={"gpu": "h200"})
        assert pool.base_job_template == template

        # The worker's own path from the stored template (with a Prefect API for references) gives the same Job.
        configuration = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(pool.base_job_template, {"gpus": 2})
        )
        assert configuration.job_manifest == job_configuration(template, gpus=2).job_manifest
        assert container(configuration.job_manifest)["resources"]["requests"] == {GPU_RESOURCE: 2, "memory": "128Gi"}

        # A pool of that name but another type is not silently kept.
        monkeypatch.setattr(kubernetes, "GPU_POOL_K8S", "likeness-gpu-k8s-clash")
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name="likeness-gpu-k8s-clash", type="process"))
        with pytest.raises(ValueError, match="type 'process'"):
            ensure_kubernetes_pool(IMAGE)


def test_the_command_line_creates_the_pool_with_its_options(prefect_api, monkeypatch, capsys):
    argv = ["deployments.kubernetes", "--image", IMAGE, "--gpus", "2", "--memory", "96Gi"]
    argv += ["--node-selector", "gpu=h200", "--node-selector", "zone=a", "--env", "LIKENESS_STORE_URI=s3://b/p"]
    monkeypatch.setattr("sys.argv", argv)
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        kubernetes.main()
        with get_client(sync_client=True) as client:
            pool = client.read_work_pool(GPU_POOL_K8S)
    assert capsys.readouterr().out == f"work pool ready: {GPU_POOL_K8S}\n"
    assert pool.base_job_template == kubernetes_base_job_template(
        IMAGE, gpus=2, memory="96Gi", node_selector={"gpu": "h200", "zone": "a"}, env={"LIKENESS_STORE_URI": "s3://b/p"}
    )
    monkeypatch.setattr("sys.argv", ["deployments.kubernetes", "--image", IMAGE, "--node-selector", "gpu"])
    with pytest.raises(SystemExit):
        kubernetes.main()
    assert "--node-selector takes KEY=VALUE" in capsys.readouterr().err
