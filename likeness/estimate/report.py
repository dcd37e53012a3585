"""The estimate as people read it: a table per stage with the character's total, and a run's measured seconds beside
what was estimated for it.

    Console().print(estimate_table(rows, "ada: production on one H100"))
    measured_against_estimate(record["estimate"], record["last_run"]["stage_seconds"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from rich.table import Table

from likeness.estimate.character import StageEstimate
from likeness.records import StageCost

COLUMNS = (
    "stage", "evaluations", "TFLOP", "seconds", "of which offload", "at most s", "peak GiB", "memory mode", "dollars",
    "at most $",
)  # fmt: skip


def estimate_table(rows: Sequence[StageEstimate], title: str) -> Table:
    """The stages and the character's total, expected and at most; seconds include the offload's copies."""
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("stage", "memory mode") else "right")
    for row in rows:
        table.add_row(
            row.stage, f"{row.evaluations:,}", f"{row.flops / 1e12:,.0f}", f"{row.seconds:,.0f}",
            f"{row.offload_seconds:,.0f}", f"{row.most_seconds:,.0f}", f"{row.peak_bytes / 2**30:.1f}",
            # A row without evaluations (loading, a pod's start) holds no memory of its own.
            (row.memory_mode or "does not fit") if row.evaluations else "", f"{row.usd:.2f}", f"{row.most_usd:.2f}",
        )  # fmt: skip
    table.add_row(
        "character", f"{sum(row.evaluations for row in rows):,}", f"{sum(row.flops for row in rows) / 1e12:,.0f}",
        f"{sum(row.seconds for row in rows):,.0f}", f"{sum(row.offload_seconds for row in rows):,.0f}",
        f"{sum(row.most_seconds for row in rows):,.0f}",
        f"{max(row.peak_bytes for row in rows) / 2**30:.1f}", "", f"{sum(row.usd for row in rows):.2f}",
        f"{sum(row.most_usd for row in rows):.2f}", style="bold",
    )  # fmt: skip
    return table


class Measured(NamedTuple):
    """One stage of a run that ran on a GPU: the seconds estimated for it (expected, at most) and measured."""

    stage: str
    gpu: str
    estimated_seconds: float
    most_seconds: float | None
    measured_seconds: float


def measured_against_estimate(
    estimate: Sequence[StageCost | dict[str, Any]], seconds: dict[str, float]
) -> list[Measured]:
    """The stages a run measured (`dataset`, `training`, `renders`, as the server timed their flow runs) beside the
    seconds estimated for them: the dataset's rows (edit, upscale, caption) add up to its flow run."""
    costs = [cost if isinstance(cost, StageCost) else StageCost.model_validate(cost) for cost in estimate]
    measured = []
    for stage, took in seconds.items():
        rows = [cost for cost in costs if cost.stage.partition(":")[0] == stage]
        if not rows:
            continue
        most = [cost.most_seconds for cost in rows]
        measured.append(
            Measured(
                stage,
                rows[0].gpu,
                round(sum(cost.seconds for cost in rows), 1),
                None if None in most else round(sum(m for m in most if m is not None), 1),
                took,
            )
        )
    return measured


def measured_table(measured: Sequence[Measured], title: str) -> Table:
    """A run's stages: estimated and measured seconds, and their ratio."""
    table = Table(title=title)
    for column in ("stage", "GPU", "estimated s", "at most s", "measured s", "measured / estimated"):
        table.add_column(column, justify="left" if column in ("stage", "GPU") else "right")
    for row in measured:
        table.add_row(
            row.stage, row.gpu, f"{row.estimated_seconds:,.0f}",
            "" if row.most_seconds is None else f"{row.most_seconds:,.0f}", f"{row.measured_seconds:,.0f}",
            f"{row.measured_seconds / row.estimated_seconds:.2f}" if row.estimated_seconds else "",
        )  # fmt: skip
    return table
