"""The training flow: a character LoRA from a finished dataset."""

from __future__ import annotations

from prefect import flow

from likeness.config import ModelProfile, TrainConfig
from likeness.records import DatasetRef, LoraRef
from tasks.train import fit_lora


@flow(name="train-lora", log_prints=True)
def train_lora(dataset: DatasetRef, config: TrainConfig, profile: ModelProfile) -> LoraRef:
    """Train the character LoRA on the dataset, with checkpoints."""
    return fit_lora(dataset, config, profile)
