"""The batch flow: every character of a manifest produced, at most `concurrency` at once, and a summary table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from likeness.run.batch import produce_rows, read_manifest
from likeness.run.progress import prefect_artifact_key
from likeness.settings import get_settings


@flow(name="produce-batch", log_prints=True)
def produce_batch(manifest: str, concurrency: int = 2) -> list[dict[str, Any]]:
    """Produce each good row of the manifest (a path the worker can read), report the broken rows by number."""
    rows, problems = read_manifest(Path(manifest))
    for number, problem in problems:
        print(f"row {number} skipped: {problem}")
    logs = get_settings().data_dir / "logs" / f"batch-{time.strftime('%Y%m%dT%H%M%S')}-{Path(manifest).stem}"
    results = produce_rows(rows, concurrency, logs)
    results += [{"row": n, "name": "", "status": f"skipped: {p}", "out": "", "log": ""} for n, p in problems]
    results.sort(key=lambda result: result["row"])
    create_table_artifact(
        key=prefect_artifact_key(f"batch-{Path(manifest).stem}"),
        table=results,
        description=f"batch {manifest}: one row per character",
    )
    return results
