"""The first task of a GPU run, what each stage will cost, and its last, what each took beside that: tables in the
Prefect UI (the estimate also in the run's record)."""

from __future__ import annotations

import os

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from likeness.config import Backend, ModelProfile, RunConfig
from likeness.dataset.catalogue import Catalogue
from likeness.estimate.report import Measured, measured_against_estimate
from likeness.inputs import InvalidInput
from likeness.records import StageCost
from likeness.run.deployed import stage_seconds
from likeness.run.progress import prefect_artifact_key
from likeness.settings import get_settings


@task(name="estimate-character")
def estimate_run(
    trigger: str,
    profile: ModelProfile,
    config: RunConfig,
    catalogue: Catalogue,
    backend: Backend = "local",
    dispatched: bool = False,
) -> tuple[StageCost, ...]:
    """The run's stages estimated on the `estimate_gpu` setting's GPU (each in a process of its own when
    `dispatched` to deployments), published as a table artifact."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # the meta-device builds would talk
    from likeness.estimate import roles
    from likeness.estimate.character import estimate_character, stage_costs
    from likeness.estimate.gpus import GPUS, price_per_hour

    settings = get_settings()
    if settings.estimate_gpu not in GPUS:
        raise InvalidInput(f"LIKENESS_ESTIMATE_GPU={settings.estimate_gpu!r} is not one of {', '.join(GPUS)}")
    gpu = GPUS[settings.estimate_gpu]
    price = price_per_hour(gpu, settings.runpod_api_key)
    roles.keep_counts_in(settings.estimate_counts_file)
    costs = stage_costs(estimate_character(profile, config, catalogue, gpu, price, backend, dispatched), gpu)
    create_table_artifact(
        key=prefect_artifact_key(f"{trigger}-estimate"),
        table=[cost.model_dump() for cost in costs],
        description=f"{trigger}: the estimate before the run, on one {gpu.name} at ${price.usd_per_hour:.2f}/h "
        f"({price.source}); ${sum(cost.usd for cost in costs):.2f}, {sum(c.seconds for c in costs):.0f} s in all",
    )
    return costs


@task(name="measure-against-estimate")
def measure_run(trigger: str, estimate: tuple[StageCost, ...]) -> list[Measured]:
    """The seconds this run's stages took, as the server timed their flow runs, beside their estimate: a table."""
    measured = measured_against_estimate(estimate, stage_seconds(flow_run.get_id()))
    create_table_artifact(
        key=prefect_artifact_key(f"{trigger}-measured"),
        table=[
            {**row._asdict(), "ratio": round(row.measured_seconds / row.estimated_seconds, 2)}
            for row in measured
            if row.estimated_seconds
        ],
        description=f"{trigger}: the seconds each stage took beside its estimate "
        f"({sum(row.measured_seconds for row in measured):.0f} s measured, "
        f"{sum(row.estimated_seconds for row in measured):.0f} s estimated)",
    )
    return measured
