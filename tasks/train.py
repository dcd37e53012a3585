"""Train: the character LoRA on this machine, with our trainer (`likeness.training.native`) and the process's model.

The dataset is written out as the training folder AI Toolkit reads (images, same-stem captions, masks beside),
the trainer writes checkpoints and samples in AI Toolkit's layout, and each checkpoint is published to the store.

    lora = fit_lora.fn(dataset.training_set(), load_profile("tiny").train, load_profile("tiny"))
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from likeness.config import ModelProfile, TrainConfig
from likeness.identity import reference_face
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.models.profiles import device_for
from likeness.records import EarlyStop, LoraCheckpoint, LoraRef, TrainingSet
from likeness.run.interrupts import check_stop
from likeness.run.memory import checkpointing_for_training, memory_for_training
from likeness.run.progress import StageProgress
from likeness.settings import get_settings
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, get_store, load_image, put_file
from likeness.training.data import read_training_folder, training_files
from likeness.training.native import Trainer
from likeness.training.spec import SAMPLES_FOLDER, TrainJob

STAGE_VERSION = 3


def train_job(
    trigger: str, config: TrainConfig, profile: ModelProfile, reference: ArtifactRef | None = None
) -> TrainJob:
    """The job that trains `trigger`'s LoRA on the profile's video model, on this machine's device; with
    `train.stop_when_flat`, the reference photo's face, which the trainer scores its samples against."""
    face = None
    if config.stop_when_flat and reference is not None:
        face, _ = reference_face(load_image(reference), "the reference photo")
    return TrainJob.for_profile(trigger, config, profile, device_for(profile, get_settings()), face)


def write_training_folder(training: TrainingSet, folder: Path) -> tuple[Path, Path]:
    """The training set as AI Toolkit reads it: `folder/dataset` (images and captions) and `folder/masks`."""
    store = get_store()
    for path, source in training_files(training):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, str):
            (folder / path).write_text(source)
        else:
            store.get_file(source.key, folder / path)
    return folder / "dataset", folder / "masks"


def publish_checkpoint(job: TrainJob, folder: Path, step: int, loss: float | None) -> LoraCheckpoint:
    """The files of the checkpoint at `step` and its samples, from the training folder into the store."""
    experts = job.config.trained_experts
    files = [put_file(folder / job.checkpoint_filename(step, expert)) for expert in experts]
    samples = [
        put_file(path)
        for index in range(len(job.config.sample_prompts))
        if (path := folder / SAMPLES_FOLDER / job.sample_filename(step, index)).is_file()
    ]
    return LoraCheckpoint.from_files(step, loss, files, samples)


@stage_task("fit-lora", STAGE_VERSION, retries=1, retry_delay_seconds=30)
def fit_lora(dataset: TrainingSet, config: TrainConfig, profile: ModelProfile) -> LoraRef:
    """Train the character LoRA here, saving a checkpoint every `checkpoint_every` steps."""
    # The LoRA trains on the video model as published, as on a pod: stored fp8 weights are for renders.
    published = profile.models["video"].model_copy(update={"weights": None})
    training = profile.model_copy(update={"models": {**profile.models, "video": published}})
    config = checkpointing_for_training(training, config, len(dataset.items), say=print)
    job = train_job(dataset.trigger, config, profile, dataset.reference)
    pipe = get_pipeline("video", memory_for_training(training, config, len(dataset.items), say=print))
    progress = StageProgress("train", config.steps, f"{dataset.trigger}-train", unit="steps")
    losses: dict[int, float] = {}

    def on_step(step: int, total: int, loss: float) -> None:
        losses[step] = loss
        progress.advance(f"loss {loss:.4f}")

    with gpu_lock, tempfile.TemporaryDirectory() as tmp:
        images, masks = write_training_folder(dataset, Path(tmp))
        folder = Path(tmp) / "training"
        trainer = Trainer(job, pipe, read_training_folder(images, masks if config.masks else None), folder)
        steps = trainer.train(on_step=on_step, check_stop=check_stop)
        checkpoints = tuple(publish_checkpoint(job, folder, step, losses.get(step)) for step in steps)
    stopped = EarlyStop(step=trainer.stopped.step, reason=trainer.stopped.reason) if trainer.stopped else None
    return LoraRef(
        trigger=dataset.trigger,
        base_model=job.model.source,
        base=config.base,
        backend="local",
        checkpoints=checkpoints,
        stopped_early=stopped,
    )
