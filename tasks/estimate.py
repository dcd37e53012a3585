"""The first task of a GPU run: what each stage will cost, as a table in the Prefect UI and in the run's record."""

from __future__ import annotations

import os

from prefect import task
from prefect.artifacts import create_table_artifact

from likeness.config import ModelProfile, RunConfig
from likeness.dataset.catalogue import Catalogue
from likeness.inputs import InvalidInput
from likeness.records import StageCost
from likeness.run.progress import prefect_artifact_key
from likeness.settings import get_settings


@task(name="estimate-character")
def estimate_run(trigger: str, profile: ModelProfile, config: RunConfig, catalogue: Catalogue) -> tuple[StageCost, ...]:
    """The run's stages estimated on the `estimate_gpu` setting's GPU, published as a table artifact."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # the meta-device builds would talk
    from likeness.estimate.character import estimate_character, stage_costs
    from likeness.estimate.gpus import GPUS, price_per_hour

    settings = get_settings()
    if settings.estimate_gpu not in GPUS:
        raise InvalidInput(f"LIKENESS_ESTIMATE_GPU={settings.estimate_gpu!r} is not one of {', '.join(GPUS)}")
    gpu = GPUS[settings.estimate_gpu]
    price = price_per_hour(gpu, settings.runpod_api_key)
    costs = stage_costs(estimate_character(profile, config, catalogue, gpu, price), gpu)
    create_table_artifact(
        key=prefect_artifact_key(f"{trigger}-estimate"),
        table=[cost.model_dump() for cost in costs],
        description=f"{trigger}: the estimate before the run, on one {gpu.name} at ${price.usd_per_hour:.2f}/h "
        f"({price.source}); ${sum(cost.usd for cost in costs):.2f}, {sum(c.seconds for c in costs):.0f} s in all",
    )
    return costs
