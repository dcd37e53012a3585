"""The batch flows: every character of a manifest, or of the store's inbox, produced at most `concurrency` at
once, with a summary table.

Run from its deployment, a batch starts one run of the `produce` deployment per character (each dispatching
its stages to the GPU pool) and skips a character whose produce run with the very same parameters already
completed; run by `likeness batch`, it runs `likeness produce` for each row on this machine.

A row's paths stay inside its manifest's folder or prefix (`likeness.run.batch`): neither flow has a parameter to
allow others, and a run from a deployment ignores `likeness batch --allow-outside`'s `outside_allowed`.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.deployments import run_deployment
from prefect.runtime import deployment, flow_run

from flows.produce import PRODUCE_DEPLOYMENT
from flows.stages import ProfileName
from likeness.run.batch import (
    BatchRow,
    ManifestProblem,
    batch_totals,
    outside_is_allowed,
    produce_rows,
    read_manifest_at,
)
from likeness.run.progress import StageProgress, prefect_artifact_key
from likeness.settings import get_settings
from likeness.storage.artifacts import get_store

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".csv")
POLL_S = 2.0


@flow(name="produce-batch", log_prints=True)
def produce_batch(manifest: str, concurrency: int = 2, profile: ProfileName = "production") -> list[dict[str, Any]]:
    """Produce each good row of the manifest, report the broken rows by number (a path outside the manifest's
    folder or prefix among them).

    Args:
        manifest: A .yaml or .csv manifest: a path the worker can read, an s3:// URL or a key in the store.
        concurrency: How many characters are produced at once.
        profile: The models of a row that names none (run from its deployment; `likeness batch` uses the
            `LIKENESS_PROFILE` setting).
    """
    from_deployment = deployment.get_id() is not None
    rows, problems = read_manifest_at(manifest, allow_outside=outside_is_allowed() and not from_deployment)
    for number, problem in problems:
        print(f"row {number} skipped: {problem}")
    if from_deployment:
        results = dispatch_rows(rows, concurrency, profile)
    else:
        logs = get_settings().data_dir / "logs" / f"batch-{time.strftime('%Y%m%dT%H%M%S')}-{Path(manifest).stem}"
        results = produce_rows(rows, concurrency, logs)
    results += [{"row": n, "name": "", "status": f"skipped: {p}", "out": "", "log": ""} for n, p in problems]
    results.sort(key=lambda result: result["row"])
    publish_table(f"batch-{Path(manifest).stem}", results, f"batch {manifest}: one row per character")
    return results


@flow(name="produce-inbox", log_prints=True)
def produce_inbox(
    prefix: str = "inbox/",
    profile: ProfileName = "production",
    overrides: dict[str, Any] | None = None,
    concurrency: int = 2,
) -> list[dict[str, Any]]:
    """Produce every character dropped into the store's inbox that is not produced yet.

    Args:
        prefix: Where in the artifact store (or bucket) new characters are dropped: a photo named after the
            character (`inbox/Ada_Lovelace.jpg`), or a manifest (.yaml/.csv) whose images sit beside it.
        profile: The models for photos dropped on their own (a manifest row may name its own).
        overrides: Settings that differ from the profile's, for photos dropped on their own.
        concurrency: How many characters are produced at once.
    """
    settings = tuple(f"{path}={json.dumps(value)}" for path, value in _flattened(overrides or {}))
    rows: list[BatchRow] = []
    results: list[dict[str, Any]] = []
    for key in get_store().list(prefix):
        name = key.rsplit("/", 1)[-1]
        stem, _, suffix = name.rpartition(".")
        if f".{suffix.lower()}" in IMAGE_SUFFIXES:
            row = BatchRow(row=len(rows) + 1, name=stem, image=key, out=Path(stem), profile=profile, set=settings)
            rows.append(row)
        elif f".{suffix.lower()}" in MANIFEST_SUFFIXES:
            try:
                found, problems = read_manifest_at(key)
            except ManifestProblem as exc:
                results.append({"row": 0, "name": key, "status": f"skipped: {exc}", "out": "", "log": ""})
                continue
            rows += [row.model_copy(update={"row": len(rows) + n}) for n, row in enumerate(found, start=1)]
            results += [{"row": 0, "name": key, "status": f"row {n} skipped: {p}", "out": "", "log": ""}
                        for n, p in problems]  # fmt: skip
    results = dispatch_rows(rows, concurrency, profile) + results
    publish_table(f"inbox-{prefix}", results, f"inbox {prefix}: one row per character found")
    return results


def dispatch_rows(rows: Sequence[BatchRow], concurrency: int, profile: str) -> list[dict[str, Any]]:
    """A produce deployment run per row, at most `concurrency` at once; a row whose produce run with the same
    parameters already completed is answered by that run."""
    produced = completed_produce_runs()
    parent = flow_run.get_id()
    bar = StageProgress("batch", len(rows), f"batch-{parent}", unit="characters")
    counting = threading.Lock()

    def produce(row: BatchRow) -> dict[str, Any]:
        result = produce_row(row)
        print(f"row {row.row} {row.name}: {result['status']}")
        with counting:
            bar.advance(f"row {row.row} {row.name}")
        return result

    def produce_row(row: BatchRow) -> dict[str, Any]:
        parameters = row.produce_parameters(profile)
        line = {"row": row.row, "name": row.name, "status": "", "out": "", "log": ""}
        done = produced.get(_parameters_key(parameters))
        if done is not None:
            return {**line, "status": f"already produced (run {done.name})", "out": f"likeness pull {done.id}"}
        print(f"row {row.row} {row.name}: started")
        child = run_deployment(
            PRODUCE_DEPLOYMENT,
            parameters=parameters,
            idempotency_key=f"{parent}:row-{row.row}:{_parameters_key(parameters)}",
            poll_interval=POLL_S,
        )
        state = child.state
        if state is not None and state.is_completed():
            return {**line, "status": "produced", "out": f"likeness pull {child.id}"}
        ended = f"{state.name}: {state.message}" if state is not None else "never started"
        return {**line, "status": f"failed ({ended})", "log": f"flow run {child.name}"}

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Each thread runs in a copy of this run's context, so its produce runs show as this run's children.
        futures = [pool.submit(contextvars.copy_context().run, produce, row) for row in rows]
        results = [future.result() for future in futures]
    print(batch_totals(results))
    return results


def completed_produce_runs() -> dict[str, Any]:
    """The completed produce runs by their parameters, newest last."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[PRODUCE_DEPLOYMENT.split("/")[0]])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
            ),
            sort=FlowRunSort.START_TIME_ASC,
        )
    return {_parameters_key(run.parameters): run for run in runs}


def _flattened(tree: dict[str, Any], path: str = "") -> list[tuple[str, Any]]:
    """`{"train": {"steps": 5}}` as `[("train.steps", 5)]`: a manifest row's `set` assignments."""
    pairs = []
    for name, value in tree.items():
        if isinstance(value, dict):
            pairs += _flattened(value, f"{path}{name}.")
        else:
            pairs.append((f"{path}{name}", value))
    return pairs


def _parameters_key(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:16]


def publish_table(key: str, results: list[dict[str, Any]], description: str) -> None:
    create_table_artifact(key=prefect_artifact_key(key), table=results, description=description)
