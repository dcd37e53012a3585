"""The options several commands share, with their help texts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from likeness.models.profiles import available_profiles

Profile = Annotated[
    str | None,
    typer.Option(
        help=f"Model profile: {', '.join(available_profiles())}, or the path of a .yaml file.",
        show_default="$LIKENESS_PROFILE, else tiny",
    ),
]
Out = Annotated[Path | None, typer.Option(help="Output folder (default: likeness-out/<name>).")]
Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: render.seed=3, train.steps=500.")
]
Refresh = Annotated[bool, typer.Option(help="Run every stage again, ignoring cached results.")]
BeyondLimits = Annotated[
    bool, typer.Option(help="Allow settings past the profile's soft limits (sizes, steps, frames).")
]
Verbose = Annotated[bool, typer.Option(help="Show Prefect's logs on the console.")]
Name = Annotated[str, typer.Argument(help="Character name; it becomes the trigger word (spaces -> '_').")]
ReferencePath = Annotated[Path, typer.Option("--image", help="The reference photo.")]
Garments = Annotated[
    list[Path] | None, typer.Option("--garment", help="A garment image for the try-on shots (repeatable).")
]
Poses = Annotated[
    list[Path] | None, typer.Option("--pose", help="A pose reference image for the pose-transfer shots (repeatable).")
]
CatalogueFile = Annotated[
    Path | None, typer.Option("--catalogue", help="A YAML catalogue whose entries add to or replace the default's.")
]
TrainBackend = Annotated[
    str,
    typer.Option(
        "--backend",
        help="Where the LoRA trains: local (this machine), runpod-native (our trainer on a RunPod pod) or "
        "runpod-aitoolkit (AI Toolkit on a pod); the pod is set with --set pod.gpu_types=[...].",
    ),
]
NoIdentity = Annotated[
    bool,
    typer.Option(
        "--no-identity", help="Curate without the face-identity check (an illustrated or stylised character)."
    ),
]
ScoringReference = Annotated[
    Path | None,
    typer.Option(
        "--image", help="The reference photo checkpoints are scored against (default: --from's reference.png)."
    ),
]
