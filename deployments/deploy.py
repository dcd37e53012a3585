"""Everything a Prefect server needs to run Likeness, in one idempotent step (`likeness deploy`).

The work pools and the GPU limit (deployments/pools.py), the results storage (every run's results and
cache records in the artifact store: `likeness.storage.results`), then the deployments of `prefect.yaml`.

    PREFECT_API_URL=http://127.0.0.1:4200/api likeness deploy --gpu-slots 2
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from deployments.pools import ensure_pools
from likeness.storage.results import save_results_block

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = PROJECT_ROOT / "prefect.yaml"


class DeployFailed(RuntimeError):
    """`prefect deploy` did not deploy everything; the message has its last words."""


def form_profile(profile: str | None) -> tuple[str, str]:
    """The profile the deployments' forms default to, and why: `profile` as given, else what this machine's GPU
    (as `likeness doctor` finds it) runs."""
    from likeness.models.profiles import available_profiles
    from likeness.run.doctor import check_gpu

    if profile is not None:
        if profile not in available_profiles():
            raise DeployFailed(f"--profile {profile!r} is not one of {', '.join(available_profiles())}")
        return profile, "as --profile says"
    gpu = check_gpu()
    if gpu.ok:
        return "production", f"this machine's GPU ({gpu.detail}) runs it; --profile sets another"
    return "tiny", "no CUDA GPU on this machine; give --profile production when the workers have GPUs"


def deploy(gpu_slots: int = 1, code_dir: Path | None = None, profile: str = "tiny") -> list[tuple[str, str]]:
    """Set up the server and deploy every deployment, the workers' checkout at `code_dir` (default: this one), each
    form that asks for a profile defaulting to `profile`; returns each deployment's `flow/deployment` name and pool."""
    ensure_pools(gpu_slots)
    save_results_block(server_default=True)
    env = {**os.environ, "LIKENESS_CODE_DIR": str((code_dir or PROJECT_ROOT).resolve())}
    prefect = Path(sys.executable).parent / "prefect"
    done = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        said = (done.stdout + done.stderr).strip().splitlines()
        raise DeployFailed("prefect deploy failed: " + " / ".join(said[-5:]))
    names = deployed_names()
    set_form_profile([name for name, _ in names], profile)
    return names


def set_form_profile(names: list[str], profile: str) -> None:
    """Every deployment of `names` whose flow takes a profile defaults to `profile` in its form: a person who fills
    in only the name and the photo gets a run the pool's machines can do."""
    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    with get_client(sync_client=True) as client:
        for name in names:
            deployment = client.read_deployment_by_name(name)
            if "profile" in (deployment.parameter_openapi_schema or {}).get("properties", {}):
                parameters = {**deployment.parameters, "profile": profile}
                client.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))


def deployed_names() -> list[tuple[str, str]]:
    """What `prefect.yaml` declares: each deployment's full name (`flow-name/deployment`) and its pool."""
    from prefect.flows import load_flow_from_entrypoint

    declared = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    names = []
    for deployment in declared:
        flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
        names.append((f"{flow.name}/{deployment['name']}", deployment["work_pool"]["name"]))
    return names
