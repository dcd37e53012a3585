"""The `likeness` command line: produce a character locally, list profiles, fetch a sample photo."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from likeness.artifacts import get_store, put_bytes
from likeness.config import RunConfig
from likeness.inputs import InvalidInput, normalise_trigger, read_reference_image
from likeness.outputs import OutputConflict, check_output_folder, run_identity
from likeness.profiles import ProfileUnavailable, available_profiles, load_profile, preflight
from likeness.settings import get_settings
from likeness.store import MissingObject, StoreError

# Locals in tracebacks could show secrets from the settings.
app = typer.Typer(
    help="Likeness: consistent AI characters from one reference photo.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(stderr=True)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """`render.seed=3` style assignments as nested dicts; values are read as YAML scalars."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        path, sep, raw = assignment.partition("=")
        if not sep or not path:
            raise InvalidInput(f"--set {assignment!r} is not of the form section.field=value")
        node = overrides
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return overrides


def _configure_environment(results_dir: Path, verbose: bool) -> None:
    """Persist results and cache records beside the artifact store; quiet the libraries' own logs.

    Must run before Prefect, diffusers and transformers are imported: they read these once.
    """
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(results_dir))
    # The local server would otherwise phone home; Likeness talks to nothing it was not pointed at.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not verbose:
        for variable, value in (
            ("PREFECT_LOGGING_LEVEL", "WARNING"),
            ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
            ("TRANSFORMERS_VERBOSITY", "error"),
            ("DIFFUSERS_VERBOSITY", "error"),
        ):
            os.environ.setdefault(variable, value)


def _progress_listener(progress: Progress):
    bars: dict[str, Any] = {}

    def update(stage: str, done: int, total: int, detail: str) -> None:
        if stage not in bars:
            bars[stage] = progress.add_task(stage, total=total)
        progress.update(bars[stage], completed=done, total=total, description=f"{stage} {detail}".strip())

    return update


@app.command()
def produce(
    name: Annotated[str, typer.Argument(help="Character name; it becomes the trigger word (spaces -> '_').")],
    image: Annotated[Path, typer.Option("--image", help="The reference photo.")],
    profile: Annotated[
        str | None,
        typer.Option(
            help="Model profile: tiny, production, permissive, or a .yaml path [default: $LIKENESS_PROFILE or tiny]."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: likeness-out/<name>).")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: render.seed=3, train.steps=500.")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Run every stage again, ignoring cached results.")] = False,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs on the console.")] = False,
) -> None:
    """Make the dataset, train the LoRA and render images and a video, all locally."""
    settings = get_settings()
    profile = profile or settings.profile
    try:
        trigger = normalise_trigger(name)
        reference = read_reference_image(image)
        model_profile = load_profile(profile)
        override_dict = parse_overrides(overrides or [])
        config = RunConfig.from_profile(model_profile, override_dict)
        out = out or Path("likeness-out") / trigger
        identity = run_identity(trigger, hashlib.sha256(reference).hexdigest(), model_profile.name, config)
        check_output_folder(out, identity)
        preflight(model_profile, settings)
        store = get_store()
    except ValidationError as exc:
        _fail(f"invalid settings: {exc}")
    except (InvalidInput, ProfileUnavailable, OutputConflict, StoreError) as exc:
        _fail(str(exc))

    _configure_environment(settings.results_dir, verbose)
    if refresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    from flows.produce import produce_character
    from likeness import pipelines, progress
    from likeness.outputs import export_outputs

    started = time.perf_counter()
    reference_ref = put_bytes(reference, f"reference{image.suffix.lower() or '.png'}", store)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        listener = _progress_listener(bar)
        progress.add_listener(listener)
        try:
            state = produce_character(
                name=trigger, reference=reference_ref.key, profile=profile, overrides=override_dict, return_state=True
            )
        finally:
            progress.remove_listener(listener)
    if not state.is_completed():
        _fail(f"the run ended {state.name}: {state.message}")
    result = state.result()
    stats = {
        "flow_run_id": str(state.state_details.flow_run_id),
        "seconds": round(time.perf_counter() - started, 2),
        "model_loads": dict(pipelines.load_counts),
    }
    try:
        manifest = export_outputs(result, out, identity, store, stats)
    except OutputConflict as exc:
        _fail(str(exc))
    except MissingObject as exc:
        _fail(f"{exc}: a cached result points at an artifact the store no longer has; run again with --refresh")
    _print_summary(out, manifest)


def _print_summary(out: Path, manifest: dict[str, Any]) -> None:
    table = Table(title=f"{manifest['identity']['trigger']} -> {out}")
    table.add_column("what")
    table.add_column("files")
    table.add_row("dataset", str(len(manifest["dataset"])))
    table.add_row("lora checkpoints", ", ".join(entry["file"] for entry in manifest["lora"]))
    table.add_row("renders", "\n".join(entry["file"] for entry in manifest["renders"]))
    loads = manifest["last_run"]["model_loads"]
    table.add_row(
        "models loaded", ", ".join(f"{role} x{count}" for role, count in loads.items()) or "none (all cached)"
    )
    table.add_row("seconds", str(manifest["last_run"]["seconds"]))
    Console().print(table)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


@app.command()
def profiles() -> None:
    """List the model profiles and the model behind each role."""
    for name in available_profiles():
        profile = load_profile(name)
        console.print(f"[bold]{name}[/] ({profile.device}, {profile.dtype}): {profile.description}")
        for role, spec in profile.models.items():
            console.print(f"  {role:<10} {spec.source}{'/' + spec.file if spec.file else ''}  [{spec.licence}]")


@app.command("sample-photo")
def sample_photo(path: Annotated[Path, typer.Argument(help="Where to write the photo (.jpg).")]) -> None:
    """Write a real face photo (Grace Hopper, from matplotlib's sample data) to try Likeness with."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if path.exists():
        _fail(f"{path} exists; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
