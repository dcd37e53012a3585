"""`likeness batch`: every character of a manifest, a few at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from likeness.cli.console import fail, say
from likeness.cli.flow_run import FlowRun
from likeness.cli.options import Verbose
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import get_store
from likeness.storage.store import ArtifactStore


def batch(
    manifest: Annotated[Path, typer.Argument(help="A .yaml or .csv manifest: name, image and optional columns.")],
    concurrency: Annotated[int, typer.Option(min=1, help="How many characters are produced at once.")] = 2,
    allow_outside: Annotated[
        bool,
        typer.Option(
            "--allow-outside",
            help="Let rows name images and output folders outside the manifest's folder: absolute paths, '..', "
            "symlinks that lead out. Without it such a row is skipped; a deployment's batch never allows them.",
        ),
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Produce every character of a manifest, at most `concurrency` at once; broken rows are reported by number."""
    from likeness.run.batch import OUTSIDE, ManifestProblem, read_manifest

    try:
        rows, problems = read_manifest(manifest, allow_outside=allow_outside)
    except ManifestProblem as exc:
        fail(str(exc))
    for number, problem in problems:
        say(f"skipped row {number}: {problem}")
    if any(OUTSIDE in problem for _, problem in problems):
        say("note: --allow-outside lets this batch use paths outside the manifest's folder")
    if not rows:
        fail(f"no row of {manifest} can run")
    BatchRun(manifest, concurrency, get_store(), get_settings(), allow_outside).start(refresh=False, verbose=verbose)


class BatchRun(FlowRun):
    """One `likeness batch` run: the batch flow, against one Prefect server its `likeness produce` children share."""

    def __init__(
        self, manifest: Path, concurrency: int, store: ArtifactStore, settings: Settings, allow_outside: bool = False
    ) -> None:
        super().__init__(f"batch-{manifest.stem}", manifest.parent, {}, "", store, settings)
        self.manifest, self.concurrency, self.allow_outside = manifest, concurrency, allow_outside

    def _flow_state(self) -> Any:
        from flows.batch import produce_batch
        from likeness.run.batch import outside_allowed

        # The flow runs here, in this thread: it reads the manifest again, as this command allowed.
        with outside_allowed(self.allow_outside):
            return produce_batch(str(self.manifest), self.concurrency, return_state=True)

    def _export(self, result: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
        return {"results": result}

    def _finish(self, manifest: dict[str, Any]) -> None:
        results = manifest["results"]
        print_batch(f"batch {self.manifest}", results)
        if any(result["status"] not in ("produced", "up to date") for result in results):
            raise typer.Exit(1)


def print_batch(title: str, results: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in ("row", "name", "status", "out"):
        table.add_column(column)
    for result in results:
        table.add_row(str(result["row"]), result["name"], result["status"], result["out"])
    Console().print(table)
