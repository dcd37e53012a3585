"""What a `train` run checks before any work, in the order it checks it, and the training set it uploads.

The training folder (given as a dataset folder or a Likeness output folder) with its captions and
masks, the scoring reference, the profile and settings, the job the backend would be sent, then
the output folder, the weights (for a local backend) and room to write. Every problem is raised
as one of `likeness.run.prepare.CHECK_FAILURES` (or an `OSError`) before Prefect starts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from likeness import __version__
from likeness.config import ModelProfile, RunConfig, check_stop_when_flat
from likeness.inputs import InvalidInput, ReferenceImage, normalise_trigger, parse_overrides, read_reference_image
from likeness.models.profiles import load_profile, preflight
from likeness.records import TrainingItem, TrainingSet
from likeness.run.outputs import (
    MANIFEST,
    RECORD_FORMAT,
    REFERENCE,
    check_output_folder,
    file_sha256,
    is_up_to_date,
    read_record,
)
from likeness.run.prepare import Say, check_reference_face, checked_backend, say_on_stderr
from likeness.run.write_checks import (
    check_out_location,
    check_writable,
    lora_checkpoint_bytes,
    video_transformer_config,
)
from likeness.settings import Settings, get_settings
from likeness.storage.artifacts import get_store, put_bytes
from likeness.storage.store import ArtifactStore
from likeness.training.data import TrainingImage, read_training_folder


class TrainingInputs(NamedTuple):
    """A `likeness train` run's checked inputs: the training folder's images, the reference, the spec, the pod."""

    trigger: str
    images: list[TrainingImage]
    reference: ReferenceImage | None
    identity_checked: bool
    profile: ModelProfile
    config: RunConfig
    backend: str

    def identity(self) -> dict[str, Any]:
        """What must match for a train run to share an output folder: all that decides the LoRA."""
        images = [
            [str(picture.image.name), file_sha256(picture.image), picture.caption]
            + ([file_sha256(picture.mask)] if picture.mask else [])
            for picture in self.images
        ]
        return {
            "format": RECORD_FORMAT,
            "command": "train",
            "trigger": self.trigger,
            "training_set": hashlib.sha256(json.dumps(images).encode()).hexdigest(),
            "reference_sha256": self.reference.original_sha256 if self.reference else None,
            "identity_checked": self.identity_checked,
            "profile": {"name": self.profile.name, **self.profile.output_identity()},
            "train": self.config.train.model_dump(mode="json"),
            "backend": self.backend,
        }


class PreparedTraining(NamedTuple):
    """A `train` run whose inputs passed every check: what its flow run needs."""

    inputs: TrainingInputs
    out: Path
    key: str
    store: ArtifactStore
    settings: Settings


def training_inputs(
    name: str,
    dataset: Path | None,
    from_out: Path | None,
    masks: Path | None,
    image: Path | None,
    no_identity: bool,
    profile: str | None,
    overrides: list[str] | None,
    beyond_limits: bool,
    backend: str,
    gpu: list[str] | None,
    say: Say = say_on_stderr,
) -> TrainingInputs:
    """Check a train run's inputs before Prefect starts and before any pod is asked for."""
    trigger = normalise_trigger(name)
    if (dataset is None) == (from_out is None):
        raise InvalidInput("give the training images as --dataset DIR or --from OUT (the output of `likeness dataset`)")
    if from_out is not None:
        record = read_record(from_out)
        if record is None:
            raise InvalidInput(f"--from {from_out} holds no {MANIFEST}: it is not a Likeness output folder")
        if record["identity"].get("trigger") != trigger:
            raise InvalidInput(
                f"--from {from_out} holds the dataset of {record['identity'].get('trigger')!r}, whose captions use "
                f"that trigger word; train it as {record['identity'].get('trigger')!r}"
            )
        if masks is not None:
            raise InvalidInput(f"--masks is for --dataset; --from uses {from_out / 'masks'}")
        dataset = from_out / "dataset"
        masks = from_out / "masks" if (from_out / "masks").is_dir() else None
        image = image or (from_out / REFERENCE if (from_out / REFERENCE).is_file() else None)
        profile = profile or record["identity"]["profile"]["name"]
    assert dataset is not None
    model_profile = load_profile(profile or get_settings().profile)
    assignments = parse_overrides(overrides or [])
    if gpu:
        assignments.setdefault("pod", {})["gpu_types"] = gpu
    config = RunConfig.from_profile(model_profile, assignments, beyond_limits=beyond_limits)
    check_stop_when_flat(config.train, backend, image is not None and not no_identity)
    if config.train.masks and masks is None:
        say(f"note: no mask folder for {dataset}, so every pixel counts in the loss (--masks DIR to give one)")
        config = config.model_copy(update={"train": config.train.model_copy(update={"masks": False})})
    images = read_training_folder(dataset, masks if config.train.masks else None)
    if not any(trigger.lower() in picture.caption.lower() for picture in images):
        say(f"warning: no caption in {dataset} holds the trigger word {trigger!r}; the LoRA will not answer to it")
    reference = None
    if image is not None and not no_identity:
        reference = read_reference_image(image)
        warning = check_reference_face(reference, str(image), True)
        if warning:
            say(f"warning: {warning}")
    elif not no_identity:
        say("note: no reference photo (--image), so the checkpoints are not scored and the last one is the LoRA")
    return TrainingInputs(
        trigger, images, reference, not no_identity, model_profile, config, checked_backend(backend, quiet=True)
    )


def training_job_file(inputs: TrainingInputs, settings: Settings) -> tuple[str, tuple[str, str]]:
    """The device the job trains on here, and the file the backend would be sent (its path and text).

    Also the check that the backend can train this spec at all (AI Toolkit and a tiny model, say)."""
    from likeness.identity import reference_face
    from likeness.models.profiles import device_for
    from likeness.training.remote import job_file
    from likeness.training.spec import TrainJob

    device = device_for(inputs.profile, settings)
    # The face the trainer scores its samples against, as the train task puts it into the job.
    face = None
    if inputs.config.train.stop_when_flat and inputs.reference is not None:
        face, _ = reference_face(Image.open(io.BytesIO(inputs.reference.png)), "the reference photo")
    job = TrainJob.for_profile(inputs.trigger, inputs.config.train, inputs.profile, device, face)
    return device, job_file(job, inputs.backend, inputs.config.train.masks)


def prepare_training(
    inputs: TrainingInputs, out: Path | None, refresh: bool, settings: Settings, say: Say = say_on_stderr
) -> PreparedTraining | None:
    """The backend, the output folder, the weights and room to write; None when the folder is up to date."""
    checked_backend(inputs.backend)
    out = out or Path("likeness-out") / f"{inputs.trigger}-lora"
    identity = inputs.identity()
    # The render settings shape the strength probe that follows training here.
    render = inputs.config.render.for_probe().model_dump(mode="json") if inputs.backend == "local" else None
    key = hashlib.sha256(
        json.dumps({"identity": identity, "render": render, "likeness": __version__}).encode()
    ).hexdigest()
    record = check_output_folder(out, identity)
    if not refresh and is_up_to_date(out, record, key):
        say(f"{inputs.trigger}: {out} is up to date (same training folder, profile and settings)")
        return None
    if inputs.backend == "local":
        preflight(inputs.profile, settings)
    store = get_store()
    check_out_location(out, settings, store)
    checkpoints = inputs.config.train.checkpoint_count * lora_checkpoint_bytes(
        inputs.config, video_transformer_config(inputs.profile, settings)
    )
    check_writable(out, store, (2 * checkpoints, checkpoints))
    return PreparedTraining(inputs, out, key, store, settings)


def upload_training_set(inputs: TrainingInputs, store: ArtifactStore) -> TrainingSet:
    """The training folder's images, captions and masks, and the reference, in the store."""
    from likeness.storage.artifacts import put_file

    root = Path(os.path.commonpath([picture.image.parent for picture in inputs.images]))
    items = tuple(
        TrainingItem(
            filename=str(picture.image.relative_to(root)),
            image=put_file(picture.image, store=store),
            caption=picture.caption,
            mask=put_file(picture.mask, store=store) if picture.mask else None,
        )
        for picture in inputs.images
    )
    reference = put_bytes(inputs.reference.png, "reference.png", store) if inputs.reference else None
    return TrainingSet(
        trigger=inputs.trigger, items=items, reference=reference, identity_checked=inputs.identity_checked
    )
