"""Typed per-run configuration: model profiles and the knobs of each stage, with defaults.

A model profile names the model behind each role and the stage defaults that suit those models;
a run's configuration starts from those defaults and takes the user's overrides. Flows receive the
resolved configuration, so the cache key of a stage sees every value that shapes its output.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from likeness.catalogue import CATALOGUE

Role = Literal["editor", "refiner", "upscaler", "captioner", "video"]
ROLES: tuple[Role, ...] = ("editor", "refiner", "upscaler", "captioner", "video")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelSpec(Frozen):
    """Where one role's weights come from: a hub repo id, a local folder, or `tiny:<role>`."""

    source: str
    file: str | None = None
    revision: str | None = None
    licence: str


class EditConfig(Frozen):
    """Qwen-Image-Edit settings for the variation stage."""

    size: int = Field(gt=0, multiple_of=16)
    steps: int = Field(gt=0)
    true_cfg_scale: float = Field(ge=1.0)
    condition_area: int = Field(gt=0)
    vl_condition_area: int = Field(gt=0)


class UpscaleConfig(Frozen):
    """ESRGAN 4x, resize to `size`, then a Flux img2img refine that starts at `start_step` of `steps`."""

    size: int = Field(gt=0, multiple_of=16)
    steps: int = Field(gt=0)
    start_step: int = Field(ge=0)
    guidance_scale: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _start_inside_schedule(self) -> UpscaleConfig:
        if self.start_step >= self.steps:
            raise ValueError(
                f"start_step ({self.start_step}) must be below steps ({self.steps}): "
                "the refine has to run at least one step"
            )
        return self

    @property
    def strength(self) -> float:
        """Flux img2img denoises the last `steps - start_step` of `steps` steps."""
        return (self.steps - self.start_step) / self.steps


class CaptionConfig(Frozen):
    max_new_tokens: int = Field(gt=0)


class TrainConfig(Frozen):
    """LoRA on the video model's transformer (peft), flow-matching loss on the dataset's latents."""

    size: int = Field(gt=0, multiple_of=16)
    steps: int = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    rank: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    seed: int = 0


class RenderConfig(Frozen):
    """Wan text-to-image (one frame) and text-to-video renders with the character LoRA."""

    size: int = Field(gt=0, multiple_of=16)
    steps: int = Field(gt=0)
    video_frames: int = Field(ge=5)
    fps: int = Field(gt=0)
    guidance_scale: float = Field(ge=0.0)
    seed: int = 0
    lora_scale: float = 1.0
    image_prompts: tuple[str, ...] = ("{trigger}, a candid photo in a sunlit cafe, natural skin texture, 35mm",)
    video_prompts: tuple[str, ...] = ("{trigger} turns towards the camera and smiles, handheld, soft daylight",)
    negative_prompt: str = "blurry, deformed, plastic skin, extra fingers, watermark"

    @model_validator(mode="after")
    def _wan_frame_count(self) -> RenderConfig:
        if (self.video_frames - 1) % 4:
            raise ValueError(f"video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81), got {self.video_frames}")
        return self


class DatasetConfig(Frozen):
    """What the dataset stage makes: which variations of the reference, and how they are refined."""

    variations: tuple[str, ...] = ("front", "side", "back", "smile", "surprised", "closeup")
    seed: int = 0
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig

    @model_validator(mode="after")
    def _known_variations(self) -> DatasetConfig:
        if not self.variations:
            raise ValueError("the dataset needs at least one variation")
        unknown = [v for v in self.variations if v not in CATALOGUE]
        if unknown:
            raise ValueError(f"unknown variation {unknown[0]!r}; known: {', '.join(CATALOGUE)}")
        if len(set(self.variations)) != len(self.variations):
            raise ValueError(f"variations repeat: {', '.join(self.variations)}")
        return self


class ModelProfile(Frozen):
    """The model behind each role and the stage defaults that suit them. Data, not code paths."""

    name: str
    description: str
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16", "float16"]
    # "model": diffusers model CPU offload, so only the component at work holds GPU memory (the
    # production models together are far larger than one GPU); "none": everything on `device`.
    offload: Literal["none", "model"] = "none"
    models: dict[Role, ModelSpec]
    edit: EditConfig
    upscale: UpscaleConfig
    caption: CaptionConfig
    train: TrainConfig
    render: RenderConfig

    @model_validator(mode="after")
    def _every_role(self) -> ModelProfile:
        missing = [role for role in ROLES if role not in self.models]
        if missing:
            raise ValueError(f"profile {self.name!r} names no model for: {', '.join(missing)}")
        return self


class RunConfig(Frozen):
    """Everything one character run needs besides the name, the photo and the profile."""

    dataset: DatasetConfig
    train: TrainConfig
    render: RenderConfig

    @classmethod
    def from_profile(cls, profile: ModelProfile, overrides: dict[str, Any] | None = None) -> RunConfig:
        """The profile's defaults with `overrides` (nested dicts, e.g. {"render": {"seed": 3}}) on top."""
        defaults = {
            "dataset": {
                "edit": profile.edit.model_dump(),
                "upscale": profile.upscale.model_dump(),
                "caption": profile.caption.model_dump(),
            },
            "train": profile.train.model_dump(),
            "render": profile.render.model_dump(),
        }
        return cls.model_validate(_merge(defaults, overrides or {}))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
