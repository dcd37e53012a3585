"""`likeness doctor`, `profiles` and `sample-photo`: this machine, the model profiles, a photo to try."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from likeness.cli.console import console, fail
from likeness.models.profiles import available_profiles, load_profile
from likeness.settings import get_settings
from likeness.storage.artifacts import get_store


def doctor() -> None:
    """Check this machine: GPU, artifact store, Prefect API, workers per pool, RunPod key (nothing secret shown)."""
    from likeness.run.doctor import run_checks

    settings = get_settings()
    checks = run_checks(settings, get_store, settings.work_pools)
    out = Console(soft_wrap=True, highlight=False)
    for check in checks:
        mark = {True: "[green]ok    [/]", False: "[bold red]failed[/]", None: "[dim]n/a   [/]"}[check.ok]
        out.print(f"{mark} {escape(check.name):<20} {escape(check.detail)}")
    if any(check.ok is False for check in checks):
        raise typer.Exit(1)


def profiles() -> None:
    """List the model profiles and the model behind each role."""
    for name in available_profiles():
        profile = load_profile(name)
        console.print(f"[bold]{name}[/] ({profile.device}, {profile.dtype}): {profile.description}")
        for role, spec in profile.models.items():
            console.print(f"  {role:<10} {spec.source}{'/' + spec.file if spec.file else ''}  [{spec.licence}]")


def sample_photo(path: Annotated[Path, typer.Argument(help="Where to write the photo (.jpg).")]) -> None:
    """Write a real face photo (Grace Hopper, from matplotlib's sample data) to try Likeness with."""
    import matplotlib

    source = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if path.exists():
        fail(f"{path} exists; not overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    console.print(f"wrote {path}")
