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


def deploy(gpu_slots: int = 1, code_dir: Path | None = None) -> list[tuple[str, str]]:
    """Set up the server and deploy every deployment, the workers' checkout at `code_dir` (default: this one);
    returns each deployment's `flow/deployment` name and its pool."""
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
    return deployed_names()


def deployed_names() -> list[tuple[str, str]]:
    """What `prefect.yaml` declares: each deployment's full name (`flow-name/deployment`) and its pool."""
    from prefect.flows import load_flow_from_entrypoint

    declared = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    names = []
    for deployment in declared:
        flow = load_flow_from_entrypoint(str(PROJECT_ROOT / deployment["entrypoint"]))
        names.append((f"{flow.name}/{deployment['name']}", deployment["work_pool"]["name"]))
    return names
