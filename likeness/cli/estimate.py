"""`likeness estimate`: what a character costs before a GPU is rented."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from likeness.cli.console import console, fail
from likeness.cli.options import CatalogueFile, Name, Overrides, Profile, TrainBackend
from likeness.config import RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.inputs import InvalidInput, normalise_trigger, parse_overrides
from likeness.models.profiles import load_profile
from likeness.run.outputs import OutputConflict, read_record
from likeness.run.prepare import checked_backend
from likeness.settings import get_settings


def estimate(
    name: Name,
    profile: Profile = None,
    gpu: Annotated[str, typer.Option(help="The GPU type to price the run on.")] = "H100",
    backend: TrainBackend = "local",
    overrides: Overrides = None,
    catalogue: CatalogueFile = None,
    out: Annotated[
        Path | None, typer.Option(help="The character's output folder, for its last run's measured seconds.")
    ] = None,
) -> None:
    """What a character costs before a GPU is rented: evaluations, FLOPs, seconds, memory and dollars per stage."""
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")  # building the models on the meta device talks
    from likeness.estimate import roles
    from likeness.estimate.character import estimate_character
    from likeness.estimate.gpus import GPUS, price_per_hour
    from likeness.estimate.report import estimate_table, measured_against_estimate, measured_table
    from likeness.runpod.pods import RunPodError

    settings = get_settings()
    if gpu not in GPUS:
        fail(f"--gpu {gpu!r} is not one of {', '.join(GPUS)}")
    try:
        trigger = normalise_trigger(name)
        checked_backend(backend, quiet=True)  # a price needs no pod, so no key
        model_profile = load_profile(profile or settings.profile)
        config = RunConfig.from_profile(model_profile, parse_overrides(overrides or []))
        run_catalogue = load_catalogue(catalogue)
        price = price_per_hour(GPUS[gpu], settings.runpod_api_key)
        roles.keep_counts_in(settings.estimate_counts_file)
        rows = estimate_character(model_profile, config, run_catalogue, GPUS[gpu], price, backend)  # type: ignore[arg-type]
    except (InvalidInput, RunPodError, ValueError) as exc:
        fail(str(exc))
    title = f"{trigger}: {model_profile.name} profile on one {gpu} at ${price.usd_per_hour:.2f}/h ({price.source})"
    wide = Console(width=max(Console().width, 150))  # the table's ten columns, unwrapped, also when piped
    wide.print(estimate_table(rows, title))
    try:
        record = read_record(out or Path("likeness-out") / trigger) or {}
    except OutputConflict as exc:
        # The estimate stands without it: say why the last run's seconds are missing.
        console.print(f"no measured seconds: {escape(str(exc))}")
        return
    seconds = (record.get("last_run") or {}).get("stage_seconds")
    if record.get("estimate") and seconds:
        measured = measured_against_estimate(record["estimate"], seconds)
        wide.print(measured_table(measured, f"{trigger}: its last run, measured beside its estimate"))
