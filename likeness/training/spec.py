"""The job one LoRA training run is: what a trainer needs, on this machine or inside a RunPod pod.

No store, no Prefect and no secrets here: a job is written as JSON beside the dataset and read by the trainer
(`python -m likeness.training.native`) or turned into AI Toolkit's YAML (`likeness.training.aitoolkit`).

    job = TrainJob(name="Ada_Lovelace", trigger="Ada_Lovelace", config=profile.train,
                   model=profile.models["video"], dtype=profile.dtype, device="cuda")
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from likeness.config import BASE_NAMES, Expert, ModelProfile, ModelSpec, TrainConfig
from likeness.identity import Face
from likeness.inputs import InvalidInput

# AI Toolkit's names, which our trainer writes too, so one agent publishes either's training folder.
OPTIMIZER_STATE = "optimizer.pt"
SAMPLES_FOLDER = "samples"


class TrainJob(BaseModel):
    """One LoRA training run: the spec, the base model and the names of what it writes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The stem of every checkpoint file (AI Toolkit's `name`); the character's trigger word.
    name: str
    trigger: str
    config: TrainConfig
    # The LoRA base: the profile's video model (a hub repo id, a local folder or `tiny:<role>`).
    model: ModelSpec
    dtype: Literal["float32", "bfloat16", "float16"]
    device: str
    # The face the samples are scored against as it trains, for `train.stop_when_flat` (None: not scored).
    reference: Face | None = None

    @classmethod
    def for_profile(
        cls, trigger: str, config: TrainConfig, profile: ModelProfile, device: str, reference: Face | None = None
    ) -> TrainJob:
        """The job that trains `trigger`'s LoRA on the profile's video model; InvalidInput where `config.base` names
        another architecture than the profile's (the job would load one model and name its files for another)."""
        if config.base != profile.train.base:
            video = profile.models["video"].source
            raise InvalidInput(
                f"train.base={config.base}: profile {profile.name!r} trains and renders {video}, which is "
                f"{profile.train.base} ({BASE_NAMES[profile.train.base]}); a LoRA trains on the model it renders with"
            )
        if config.gradient_checkpointing == "auto":
            # Not decided for this machine's GPU (likeness.run.memory): a pod's is picked as it starts. On fits
            # wherever the video model does.
            config = config.model_copy(update={"gradient_checkpointing": True})
        return cls(
            name=trigger,
            trigger=trigger,
            config=config,
            model=profile.models["video"],
            dtype=profile.dtype,
            device=device,
            reference=reference,
        )

    def checkpoint_filename(self, step: int, expert: Expert | None = None) -> str:
        """`<name>_<9-digit step>.safetensors`, with `_high_noise` / `_low_noise` for an A14B expert."""
        suffix = f"_{expert}" if expert and self.config.base == "wan22_14b" else ""
        return f"{self.name}_{step:09d}{suffix}.safetensors"

    def checkpoint_steps(self) -> list[int]:
        """The steps a checkpoint is saved at: every `checkpoint_every`, and the last."""
        every, steps = self.config.checkpoint_every, self.config.steps
        return sorted({*range(every, steps + 1, every), steps})

    def sampled_steps(self) -> list[int]:
        """The steps samples are made at: every `sample_interval` and the last, each also a checkpoint step."""
        every, steps = self.config.sample_interval, self.config.steps
        return sorted({*range(every, steps + 1, every), steps} & set(self.checkpoint_steps()))

    def sample_filename(self, step: int, index: int) -> str:
        return f"{self.name}__{step:09d}_{index}.png"
