"""Runs of deployments, as the CLI starts and follows them and as one stage finds the run before it.

run = start_run("produce-character/produce", {"name": "Ada", "reference": "s3://inbox/ada.jpg"})
final = follow_run(run.id, on_progress=print)
result = completed_result(str(run.id))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from likeness.inputs import InvalidInput

POLL_S = 1.0


class RunRefused(InvalidInput):
    """The server refused to start the run: an unknown deployment, or parameters its schema does not allow."""


def start_run(deployment: str, parameters: dict[str, Any]) -> Any:
    """A new flow run of `deployment` (`flow-name/deployment-name`), checked by the server against its schema."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment)
        except ObjectNotFound:
            raise RunRefused(f"no deployment {deployment!r} on this Prefect server: run `likeness deploy`") from None
        try:
            return client.create_flow_run_from_deployment(found.id, parameters=parameters)
        except PrefectHTTPStatusError as exc:
            detail = exc.response.json().get("detail", exc.response.text) if exc.response.content else str(exc)
            raise RunRefused(f"{deployment} refused these parameters: {detail}") from None


def run_tree(client: Any, flow_run_id: UUID) -> list[Any]:
    """The flow run and every flow run under it (subflows and dispatched stage runs), parents first."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs = [client.read_flow_run(flow_run_id)]
    pending = [flow_run_id]
    while pending:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=pending))
        )
        runs += children
        pending = [child.id for child in children]
    return runs


Progress = Callable[[str, float, str], None]


def follow_run(flow_run_id: UUID, on_progress: Progress, on_state: Callable[[str, str], None]) -> Any:
    """Poll the run until it is final; `on_progress(key, percent, description)` for each progress artifact of
    the run and its stage runs as it changes, `on_state(run name, state name)` for each state change."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    seen_states: dict[UUID, str] = {}
    seen_progress: dict[str, float] = {}
    with get_client(sync_client=True) as client:
        while True:
            runs = run_tree(client, flow_run_id)
            for run in runs:
                name = run.state.name if run.state else "?"
                if seen_states.get(run.id) != name:
                    seen_states[run.id] = name
                    on_state(f"{_flow_name(client, run.flow_id)} {run.name}", name)
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    type=ArtifactFilterType(any_=["progress"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[run.id for run in runs]),
                )
            )
            for artifact in artifacts:
                label = artifact.key or str(artifact.id)
                percent = float(artifact.data or 0.0)
                if seen_progress.get(label) != percent:
                    seen_progress[label] = percent
                    on_progress(label, percent, artifact.description or "")
            top = runs[0]
            if top.state is not None and top.state.is_final():
                return top
            time.sleep(POLL_S)


# The flows whose runs are a character's stages, inline (subflows) or dispatched (inside the stage deployments' runs).
STAGE_FLOWS = {"build-dataset": "dataset", "train-lora": "training", "render": "renders"}


def stage_seconds(flow_run_id: UUID | str) -> dict[str, float]:
    """The seconds each stage of a run took, as the server measured its flow run: what an estimate is held to."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        named = [(_flow_name(client, run.flow_id), run) for run in run_tree(client, UUID(str(flow_run_id)))]
    seconds = {name: round(run.total_run_time.total_seconds(), 1) for name, run in named if name in STAGE_FLOWS}
    return {STAGE_FLOWS[name]: value for name, value in seconds.items()}


_flow_names: dict[UUID, str] = {}


def _flow_name(client: Any, flow_id: UUID) -> str:
    if flow_id not in _flow_names:
        _flow_names[flow_id] = client.read_flow(flow_id).name
    return _flow_names[flow_id]


def completed_result(run: str) -> tuple[Any, Any]:
    """A completed flow run (by id or by name) and its result, read from the results storage."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    import likeness.storage.results  # noqa: F401  (the block class the results are stored with)

    with get_client(sync_client=True) as client:
        try:
            found = [client.read_flow_run(UUID(run))]
        except ValueError:
            found = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run])), limit=2)
        except ObjectNotFound:
            found = []
    if len(found) != 1:
        raise InvalidInput(f"no flow run {run!r}" if not found else f"two flow runs are named {run!r}: give its id")
    state = found[0].state
    if state is None or not state.is_completed():
        raise InvalidInput(f"run {run!r} has not completed (it is {state.name if state else 'not started'})")
    return found[0], state.result()
