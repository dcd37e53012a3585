"""`likeness deploy`, `run` and `pull`: Likeness on a Prefect server, its deployments' runs and their files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from likeness.cli.batch import print_batch
from likeness.cli.console import console, fail, say
from likeness.cli.flow_run import print_summary
from likeness.cli.options import Out
from likeness.inputs import InvalidInput, parse_overrides
from likeness.records import CharacterResult
from likeness.run.outputs import RECORD_FORMAT, OutputConflict, check_output_folder, export_outputs
from likeness.storage.artifacts import get_store
from likeness.storage.store import StoreError


def prefect_api(command: str) -> str:
    """The Prefect server a deployment command talks to; a clear error when none is configured."""
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        fail(f"likeness {command} needs a Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    return api


def deploy_command(
    gpu_slots: Annotated[int, typer.Option(min=1, help="GPU stage tasks at once, all GPU workers together.")] = 1,
    code_dir: Annotated[
        Path | None, typer.Option(help="Where the workers' checkout of Likeness is (default: this one).")
    ] = None,
    profile: Annotated[
        str | None,
        typer.Option(help="The profile the run forms default to: what the workers' machines run (tiny on CPUs)."),
    ] = None,
) -> None:
    """Set up the Prefect server for Likeness: work pools, GPU limit, results storage and every deployment."""
    api = prefect_api("deploy")
    from deployments.deploy import DeployFailed, deploy, form_profile

    try:
        default, why = form_profile(profile)
        deployed = deploy(gpu_slots, code_dir, default)
    except (DeployFailed, StoreError) as exc:
        fail(str(exc))
    say(f"the run forms default to profile={default}: {why}")
    table = Table(title=f"deployed to {api}")
    table.add_column("deployment")
    table.add_column("work pool")
    for name, pool in deployed:
        table.add_row(name, pool)
    Console().print(table)


DEPLOYMENT_NAMES = {
    "produce": "produce-character/produce",
    "dataset": "produce-dataset/dataset",
    "train": "train-character/train",
    "train-runpod": "train-character/train-runpod",
    "render": "render-character/render",
    "batch": "produce-batch/batch",
    "inbox": "produce-inbox/inbox",
    "sweep-pods": "sweep-pods/sweep-pods",
}


def run_command(
    deployment: Annotated[str, typer.Argument(help=f"One of {', '.join(DEPLOYMENT_NAMES)}, or flow/deployment.")],
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="A parameter as name=value (YAML values; repeatable).")
    ] = None,
    watch: Annotated[bool, typer.Option(help="Follow the run: stages, progress, files at the end.")] = False,
    out: Annotated[Path | None, typer.Option(help="With --watch: the folder for the character's files.")] = None,
) -> None:
    """Start a run of a deployment; its logs go to the Prefect UI, the console shows only its progress."""
    prefect_api("run")
    from likeness.run.deployed import follow_run, start_run

    name = DEPLOYMENT_NAMES.get(deployment, deployment)
    try:
        parameters = parse_overrides(param or [], "--param")
        flow_run = start_run(name, parameters)
    except InvalidInput as exc:
        fail(str(exc))
    say(f"started {name} run {flow_run.name} ({flow_run.id})")
    if not watch:
        say(f"follow it with: likeness run ... --watch, or in the UI; its files: likeness pull {flow_run.id}")
        return
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=console
    ) as bar:
        bars: dict[str, Any] = {}

        def on_progress(key: str, percent: float, description: str) -> None:
            if key not in bars:
                bars[key] = bar.add_task(key, total=100)
            bar.update(bars[key], completed=percent, description=escape(description or key))

        final = follow_run(flow_run.id, on_progress, lambda run, state: bar.console.print(f"{run}: {state}"))
    if not final.state.is_completed():
        fail(f"{name} run {final.name} ended {final.state.name}: {final.state.message or 'see the Prefect UI'}")
    say(f"{name} run {final.name} completed")
    flow_name = name.split("/")[0]
    if flow_name in ("produce-batch", "produce-inbox"):
        from likeness.run.deployed import completed_result

        print_batch(f"{name} run {final.name}", completed_result(str(final.id))[1])
    elif flow_name in ("produce-character", "produce-dataset", "train-character", "render-character"):
        pull(str(final.id), out)


def pull(
    run: Annotated[str, typer.Argument(help="A produce or stage run: its flow run id or name.")],
    out: Out = None,
) -> None:
    """Copy what a run made for a character (dataset, LoRA, renders) from the artifact store into a folder."""
    prefect_api("pull")
    from likeness.run.deployed import completed_result, stage_seconds

    try:
        flow_run, stored = completed_result(run)
        result = CharacterResult.model_validate(stored)
    except InvalidInput as exc:
        fail(str(exc))
    except ValueError:
        fail(f"run {run!r} made no character: pull takes a produce, dataset, train or render run")
    trigger = result.dataset.trigger
    out = out or Path("likeness-out") / trigger
    identity = {
        "format": RECORD_FORMAT,
        "trigger": trigger,
        "reference_sha256": result.dataset.reference.sha256,
        # Any later run of this character from this photo may be pulled into the same folder.
        "pulled": True,
    }
    stats = {
        "flow_run_id": str(flow_run.id),
        "seconds": round(flow_run.total_run_time.total_seconds(), 2),
        "stage_seconds": stage_seconds(flow_run.id),
    }
    try:
        check_output_folder(out, identity)
        manifest = export_outputs(result, out, identity, str(flow_run.id), get_store(), {**stats, "model_loads": {}})
    except (OutputConflict, StoreError) as exc:
        fail(str(exc))
    print_summary(out, manifest)
