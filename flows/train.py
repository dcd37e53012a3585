"""The training flow: a character LoRA from a finished dataset, its best checkpoint chosen by identity."""

from __future__ import annotations

from prefect import flow

from likeness.config import Backend, ModelProfile, PodConfig, RenderConfig, TrainConfig, check_stop_when_flat
from likeness.records import LoraRef, TrainingSet
from tasks.checkpoints import pick_checkpoint
from tasks.strength_probe import probe_strengths
from tasks.train import fit_lora
from tasks.train_runpod import fit_lora_on_runpod


@flow(name="train-lora", log_prints=True)
def train_lora(
    dataset: TrainingSet,
    config: TrainConfig,
    profile: ModelProfile,
    backend: Backend = "local",
    pod: PodConfig | None = None,
    render: RenderConfig | None = None,
) -> LoraRef:
    """Train the character LoRA on the training set with checkpoints, then pick the one most like the reference;
    `pod.gpu_types` are the GPU types a `runpod-*` backend asks for, in order. Given the `render` settings (where the
    video model is on this machine), probe the strengths the renders of that checkpoint default to."""
    check_stop_when_flat(config, backend, dataset.identity_checked and dataset.reference is not None)
    if backend == "local":
        fitted = fit_lora(dataset, config, profile)
    else:
        fitted = fit_lora_on_runpod(dataset, config, profile, backend, pod or PodConfig())
    if fitted.stopped_early:
        stop = fitted.stopped_early
        print(f"{dataset.trigger}: training stopped early at step {stop.step}: {stop.reason}")
    lora = pick_checkpoint(fitted, dataset.reference, dataset.identity_checked)
    if render is not None:
        lora = probe_strengths(lora, dataset.reference, dataset.identity_checked, render.for_probe(), profile)
    return lora
