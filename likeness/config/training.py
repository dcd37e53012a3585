"""The training spec (`TrainConfig`): one character LoRA on a Wan transformer, its base models and experts."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from likeness.base import Frozen
from likeness.config.base import InvalidSettings, PromptTemplate, Seed
from likeness.config.limits import Multiple, Problem, Stage

WanBase = Literal["wan21_14b", "wan22_14b", "wan22_5b"]
Expert = Literal["high_noise", "low_noise"]
EXPERTS: tuple[Expert, ...] = ("high_noise", "low_noise")
# VAE stride times patch size: the multiple each base model's sizes must be (Wan 2.1's VAE, used by both 14B
# models, downsamples 8x; Wan 2.2's, used by the 5B, 16x; every transformer patches 2x2).
BASE_SIZE_MULTIPLE: dict[str, int] = {"wan21_14b": 16, "wan22_14b": 16, "wan22_5b": 32}
BASE_NAMES: dict[str, str] = {
    "wan21_14b": "Wan 2.1 14B",
    "wan22_14b": "Wan 2.2 T2V-A14B",
    "wan22_5b": "Wan 2.2 TI2V-5B",
}


class StopWhenFlat(Frozen):
    """Stop training once the identity score of the samples has not improved for `patience` sampled checkpoints."""

    # Never stop before this step: early samples may not show the character yet.
    min_step: int = Field(gt=0)
    patience: int = Field(ge=1)


class TrainConfig(Stage):
    """The training spec: one character LoRA on a Wan transformer, the same for every backend (our trainer
    locally or on a pod, AI Toolkit on a pod). `base` must be the architecture of the profile's video model."""

    base: WanBase = "wan22_5b"
    # Wan 2.2 T2V-A14B only: which experts to train, each on its own timestep range (split at `boundary_ratio`).
    experts: tuple[Expert, ...] = EXPERTS
    boundary_ratio: float = Field(default=0.875, gt=0, lt=1)
    # AI Toolkit trains one A14B expert at a time, switching every this many steps.
    switch_boundary_every: int = Field(default=10, gt=0)
    # The largest training resolution (long side, px); `buckets` adds smaller ones, as AI Toolkit's resolution list.
    size: int = Field(gt=0)
    buckets: tuple[int, ...] = ()
    steps: int = Field(gt=0)
    # Above `steps` is fine: the final step always saves a checkpoint.
    checkpoint_every: int = Field(default=500, gt=0)
    # Sample images for choosing the best checkpoint; None: at every checkpoint.
    sample_every: int | None = Field(default=None, gt=0)
    sample_prompts: tuple[PromptTemplate, ...] = (
        "{trigger}, a portrait photo, looking at the camera, soft window light",
        "{trigger}, a full body photo, standing in a park, natural light",
    )
    # How our trainer samples a checkpoint, so the best one is best where it will be used. "render": as renders run
    # the video model, where it has speed LoRAs (production's A14B): those at strength 1 beside the LoRA, Euler on
    # their sigmas, no CFG (4 transformer evaluations a sample); a model without them (tiny, TI2V-5B) samples as
    # "training" does. "training": `sample_steps` of the model's own scheduler at `sample_guidance_scale`. AI
    # Toolkit samples its own way, with `sample_steps` and `sample_guidance_scale`.
    sampler: Literal["render", "training"] = "render"
    sample_steps: int = Field(default=20, gt=0)
    sample_guidance_scale: float = Field(default=4.0, ge=0.0)
    rank: int = Field(gt=0)
    # None: alpha = rank (scale 1), as AI Toolkit's Wan examples.
    alpha: float | None = Field(default=None, gt=0)
    learning_rate: float = Field(gt=0)
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    # Drop a caption this often (train on an empty prompt), so the character also appears without its words.
    caption_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # Weight the loss by the dataset's face masks (AI Toolkit's mask_path).
    masks: bool = True
    # Recompute each block's activations in the backward pass: a third more FLOPs a step for a ninth of the memory.
    # "auto": off where a step without it fits this GPU with the video model resident (the counts `likeness
    # estimate` uses: likeness.estimate.training.checkpointing_decided), on elsewhere and where the GPU is not known
    # before training starts (a pod's).
    gradient_checkpointing: bool | Literal["auto"] = True
    # AI Toolkit: offload what it can and quantise the transformer to fit a 24 GB GPU.
    low_vram: bool = False
    quantize: bool = False
    seed: Seed = 0
    # None: train every step; else stop once the samples' identity scores are flat (needs a reference face).
    stop_when_flat: StopWhenFlat | None = None

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Every training resolution, largest first."""
        return tuple(sorted({self.size, *self.buckets}, reverse=True))

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    @property
    def sample_interval(self) -> int:
        return self.sample_every or self.checkpoint_every

    @property
    def checkpoint_count(self) -> int:
        """How many checkpoints training saves: one every `checkpoint_every` steps, and one at the end."""
        return math.ceil(self.steps / self.checkpoint_every)

    @property
    def trained_experts(self) -> tuple[Expert, ...]:
        """The experts a LoRA is trained on: both named ones for the A14B, the one transformer otherwise."""
        return self.experts if self.base == "wan22_14b" else ("high_noise",)

    @model_serializer(mode="wrap")
    def _without_stop_when_off(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when off, so that the cache keys and output folders of runs from before it existed still match.
        dumped = handler(self)
        if self.stop_when_flat is None:
            dumped.pop("stop_when_flat", None)
        return dumped

    @model_validator(mode="after")
    def _fits_the_base_model(self) -> TrainConfig:
        if any(bucket > self.size for bucket in self.buckets):
            raise ValueError(f"buckets {list(self.buckets)} must not exceed size ({self.size}), the largest resolution")
        if not self.experts or len(set(self.experts)) != len(self.experts):
            raise ValueError(f"experts must name high_noise and/or low_noise once each, got {list(self.experts)}")
        if self.base != "wan22_14b" and self.experts != EXPERTS:
            raise ValueError(f"experts applies to wan22_14b only; {BASE_NAMES[self.base]} has one transformer")
        if self.sample_every is not None and self.sample_every % self.checkpoint_every:
            raise ValueError(
                f"sample_every ({self.sample_every}) must be a multiple of checkpoint_every ({self.checkpoint_every}): "
                "samples are made of checkpoints"
            )
        if not self.sample_prompts:
            raise ValueError("sample_prompts is empty: the best checkpoint is chosen on samples of these prompts")
        stop = self.stop_when_flat
        # The rule is read at samples from min_step on, and stopping at the last step would stop nothing.
        if stop and math.ceil(stop.min_step / self.sample_interval) * self.sample_interval >= self.steps:
            raise ValueError(
                f"stop_when_flat.min_step ({stop.min_step}) leaves no sample before the last step (samples every "
                f"{self.sample_interval} of {self.steps} steps): training could never stop early"
            )
        return self

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The per-setting limits, each bucket's size, and the number of checkpoints the run saves."""
        count = self.checkpoint_count
        subject = (
            f"the number of checkpoints of {path}.steps={self.steps} with {path}.checkpoint_every="
            f"{self.checkpoint_every} ({count})"
        )
        problems = super().limit_problems(path, limits) + limits.checkpoints.problems(subject, count)
        for i, bucket in enumerate(self.buckets):
            problems += limits.size.problems(f"{path}.buckets[{i}]={bucket}", bucket)
        # The base model's own multiple, where the profile's limits (written for its video model) do not say it: a
        # size off the profile's multiple is reported once, by the limit above.
        base = Multiple(
            of=BASE_SIZE_MULTIPLE[self.base], why=f"as {BASE_NAMES[self.base]} needs (VAE stride x 2x2 patch)"
        )
        profile_step = limits.size.multiple
        for name, size in [("size", self.size), *((f"buckets[{i}]", b) for i, b in enumerate(self.buckets))]:
            off_base = base.problem(f"{path}.{name}={size} (train.base={self.base})", size)
            if off_base and not (profile_step and size % profile_step.of):
                problems.append(off_base)
        return problems


def check_stop_when_flat(config: TrainConfig, backend: str, scored: bool) -> None:
    """Refuse `train.stop_when_flat` where it cannot apply: samples not scored by identity, or AI Toolkit."""
    if config.stop_when_flat is None:
        return
    if not scored:
        raise InvalidSettings(
            [
                "train.stop_when_flat stops on the identity score of the samples, and this run scores none "
                "(--no-identity, or no reference photo): leave the setting out or give a reference face"
            ]
        )
    if backend == "runpod-aitoolkit":
        raise InvalidSettings(
            [
                "train.stop_when_flat needs our trainer, which scores its samples as it trains; AI Toolkit cannot: "
                "use --backend runpod-native or local"
            ]
        )
