"""What a `produce` or `dataset` run checks before any work, in the order it checks it.

The inputs as people see them (name, photo, garments, poses, catalogue), the profile and the
settings within its limits, the output folder (Likeness's own, not already up to date), the
reference's face, the model weights, and room to write. Every problem is raised as one of
`CHECK_FAILURES` (or an `OSError`) before a model loads or Prefect starts; what is fine to
go on with is said through `say`. Nothing here needs the command line:

    prepared = prepare_character("dataset", "Ada", Path("ada.jpg"), ..., say=print)
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from likeness.config import BACKENDS, RunConfig, check_shot_count
from likeness.dataset.catalogue import Catalogue, check_inputs_used, load_catalogue
from likeness.inputs import InvalidInput, ReferenceImage, normalise_trigger, parse_overrides, read_reference_image
from likeness.models.profiles import ProfileUnavailable, load_profile, preflight
from likeness.run.outputs import OutputConflict, check_output_folder, is_up_to_date, run_identity, run_key
from likeness.run.write_checks import (
    WriteCheckFailed,
    check_out_location,
    check_writable,
    estimate_run_bytes,
    video_transformer_config,
)
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import get_store
from likeness.storage.store import ArtifactStore, StoreError

Say = Callable[[str], None]

# What a check before any work raises: the command says it in one line and changes nothing.
CHECK_FAILURES = (InvalidInput, ProfileUnavailable, OutputConflict, StoreError, WriteCheckFailed)


def say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr)


class CharacterInputs(NamedTuple):
    """The checked inputs of a run, as they go into the store."""

    reference_png: bytes
    garment_pngs: list[bytes]
    pose_pngs: list[bytes]
    catalogue: Catalogue


class PreparedCharacter(NamedTuple):
    """A `produce` or `dataset` run whose inputs passed every check: what its flow run needs."""

    command: str
    trigger: str
    inputs: CharacterInputs
    profile: str
    config: RunConfig
    out: Path
    identity: dict[str, Any]
    key: str
    store: ArtifactStore
    settings: Settings


def prepare_character(
    command: str,
    name: str,
    image: Path,
    garments: list[Path] | None,
    poses: list[Path] | None,
    catalogue_path: Path | None,
    no_identity: bool,
    profile: str | None,
    out: Path | None,
    overrides: list[str] | None,
    refresh: bool,
    beyond_limits: bool,
    say: Say = say_on_stderr,
) -> PreparedCharacter | None:
    """Check every input before any model loads; None when the output folder is already up to date."""
    settings = get_settings()
    profile = profile or settings.profile
    trigger = normalise_trigger(name)
    reference = read_reference_image(image)
    second = {
        "garment": [read_reference_image(path, "garment image") for path in garments or []],
        "pose": [read_reference_image(path, "pose image") for path in poses or []],
    }
    catalogue = load_catalogue(catalogue_path)
    model_profile = load_profile(profile)
    # --no-identity is the setting it stands for, after any --set of it.
    assignments = [*(overrides or []), *(["dataset.curation.identity=false"] if no_identity else [])]
    config = RunConfig.from_profile(model_profile, parse_overrides(assignments), beyond_limits=beyond_limits)
    shots = catalogue.shots(config.dataset.variations, garments=len(second["garment"]), poses=len(second["pose"]))
    check_inputs_used(shots, len(second["garment"]), len(second["pose"]))
    check_shot_count(len(shots), model_profile.limits, beyond_limits)
    out = out or Path("likeness-out") / trigger
    inputs = {
        "garments": [picture.original_sha256 for picture in second["garment"]],
        "poses": [picture.original_sha256 for picture in second["pose"]],
        "catalogue": catalogue_digest(catalogue),
    }
    identity = run_identity(trigger, reference.original_sha256, model_profile, config, inputs)
    key = run_key(identity, config, command)
    record = check_output_folder(out, identity)
    if not refresh and is_up_to_date(out, record, key):
        say(f"{trigger}: {out} is up to date (same photo, profile and settings; files unchanged)")
        return None
    warning = check_reference_face(reference, str(image), config.dataset.curation.identity)
    preflight(model_profile.for_upscale(config.dataset.upscale), settings)
    store = get_store()
    check_out_location(out, settings, store)
    transformer = video_transformer_config(model_profile, settings)
    check_writable(out, store, estimate_run_bytes(config, transformer, len(shots), len(reference.png)))
    for note in [*reference.notes, *(n for pictures in second.values() for picture in pictures for n in picture.notes)]:
        say(f"note: {note}")
    if warning:
        say(f"warning: {warning}")
    checked = CharacterInputs(
        reference.png, [p.png for p in second["garment"]], [p.png for p in second["pose"]], catalogue
    )
    return PreparedCharacter(command, trigger, checked, profile, config, out, identity, key, store, settings)


def checked_backend(backend: str, quiet: bool = False) -> str:
    """The backend, if it is one; a RunPod one only with a key (checked against the API) and an S3 store.

    `quiet`: only that it is a backend, for `--print-config`, which starts nothing.
    """
    if backend not in BACKENDS:
        raise InvalidInput(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend != "local" and not quiet:
        from likeness.runpod.pods import RunPodError
        from likeness.training.remote import check_remote_store, runpod_client

        try:
            check_remote_store()
            runpod_client()
        except RunPodError as exc:
            raise InvalidInput(str(exc)) from exc
    return backend


def catalogue_digest(catalogue: Catalogue) -> str:
    """What of a catalogue decides the dataset: its entries, not where they were read from."""
    return hashlib.sha256(json.dumps(catalogue.model_dump(mode="json")["entries"]).encode()).hexdigest()


def check_reference_face(reference: ReferenceImage, label: str, identity: bool) -> str | None:
    """Refuse a reference with no face when curation checks identity; a warning when it has several."""
    if not identity:
        return None
    from likeness.identity import reference_face

    _, warning = reference_face(Image.open(io.BytesIO(reference.png)), label)
    return warning
