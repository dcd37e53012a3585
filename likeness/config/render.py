"""The render stage's settings (`RenderConfig`): Wan image and video renders with the character LoRA."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from likeness.base import Frozen
from likeness.config.base import PromptTemplate, Seed
from likeness.config.limits import Problem, Stage

Strength = Annotated[float, Field(ge=0.0)]
# The render settings that do not shape a still of the strength probe.
RENDERS_ALONE = (
    "seed", "fx", "lora_scale", "speed_lora_scale", "upscale_long_side", "upscale_memory_mb", "image_prompts",
    "video_prompts",
)  # fmt: skip


class StrengthProbe(Frozen):
    """Stills of the character at each pair of strengths, scored against the reference face, from which renders
    take the strengths they leave open (`lora_scale`, `speed_lora_scale`): speed LoRAs weaken likeness, and no one
    strength suits every character. Probed once the best checkpoint is chosen, where identity is checked."""

    enabled: bool = True
    lora_scales: tuple[Strength, ...] = Field(default=(0.8, 1.0, 1.3, 1.6), min_length=1)
    # Only where the video model has speed LoRAs; elsewhere the character's strength alone varies.
    speed_lora_scales: tuple[Strength, ...] = Field(default=(0.8, 1.0), min_length=1)
    # Stills of each pair, seeds 0, 1, ...: a pair scores the median of theirs.
    seeds: int = Field(default=2, ge=1)
    prompt: PromptTemplate = "{trigger}, a portrait photo, looking at the camera"


class RenderConfig(Stage):
    """Wan text-to-image (one frame) and text-to-video renders with the character LoRA.

    Prompts are templates: `{trigger}` becomes the trigger word, `{{` and `}}` are literal braces.
    """

    size: int = Field(gt=0)
    steps: int = Field(gt=0)
    # A video is more than one frame, and Wan's frame counts are 4k+1: 5 is the shortest.
    video_frames: int = Field(ge=5)
    fps: int = Field(gt=0)
    guidance_scale: float = Field(ge=0.0)
    seed: Seed = 0
    # 0 renders the base model (a comparison); a negative scale would steer away from the character. None: the
    # strength the LoRA's probe chose (`probe`), else 1.0; a strength set here wins over the probe's.
    lora_scale: Strength | None = None
    # The strength of the video model's step-distillation LoRAs (the profile's `speed_loras`), where it has them;
    # None as for `lora_scale`.
    speed_lora_scale: Strength | None = None
    probe: StrengthProbe = StrengthProbe()
    # A post FX preset (`likeness.media.post_fx.PRESETS`) applied to every image and every frame of a video.
    fx: str = "none"
    # Videos upscaled to this long side in temporal chunks and tiles (3840: 4K), beside the render; None: not.
    upscale_long_side: int | None = Field(default=None, gt=0)
    # The bound on the upscale's working memory: chunks and tiles shrink to stay under it.
    upscale_memory_mb: int = Field(default=4096, gt=0)
    image_prompts: tuple[PromptTemplate, ...] = (
        "{trigger}, a candid photo in a sunlit cafe, natural skin texture, 35mm",
    )
    video_prompts: tuple[PromptTemplate, ...] = (
        "{trigger} turns towards the camera and smiles, handheld, soft daylight",
    )
    negative_prompt: str = "blurry, deformed, plastic skin, extra fingers, watermark"

    def with_strengths(self, lora_scale: float | None = None, speed_lora_scale: float | None = None) -> RenderConfig:
        """These settings with each strength left open set: to the one given (a probe's choice), else 1.0."""
        return self.model_copy(
            update={
                "lora_scale": _first_set(self.lora_scale, lora_scale, 1.0),
                "speed_lora_scale": _first_set(self.speed_lora_scale, speed_lora_scale, 1.0),
            }
        )

    def for_probe(self) -> RenderConfig:
        """These settings as the strength probe takes them: those of the renders alone (the seed, post FX, prompts,
        upscale and strengths; the probe has its own) at their defaults, so that changing them does not probe again."""
        fields = type(self).model_fields
        return self.model_copy(update={name: fields[name].default for name in RENDERS_ALONE})

    @model_validator(mode="after")
    def _wan_frame_count(self) -> RenderConfig:
        if (self.video_frames - 1) % 4:
            raise ValueError(f"video_frames must be 4k+1 for Wan (5, 9, ..., 41, 81), got {self.video_frames}")
        return self

    @model_validator(mode="after")
    def _known_fx(self) -> RenderConfig:
        from likeness.media.post_fx import post_fx_preset

        post_fx_preset(self.fx)
        return self

    @model_validator(mode="after")
    def _something_to_render(self) -> RenderConfig:
        if not self.image_prompts and not self.video_prompts:
            raise ValueError("image_prompts and video_prompts are both empty: give at least one prompt")
        return self

    def limit_problems(self, path: str, limits: BaseModel) -> list[Problem]:
        """The per-setting limits, and the length of every prompt the text encoder reads."""
        prompts = [
            (f"{path}.{kind}[{i}]", p)
            for kind in ("image_prompts", "video_prompts")
            for i, p in enumerate(getattr(self, kind))
        ]
        prompts.append((f"{path}.negative_prompt", self.negative_prompt))
        prompts.append((f"{path}.probe.prompt", self.probe.prompt))
        problems = super().limit_problems(path, limits)
        # The probe renders at each of its strengths: each is held to the limit of the strength it tries.
        for name in ("lora_scales", "speed_lora_scales"):
            limit = getattr(limits, name.removesuffix("s"))
            for i, scale in enumerate(getattr(self.probe, name)):
                problems += limit.problems(f"{path}.probe.{name}[{i}]={scale:g}", scale)
        for where, prompt in prompts:
            problems += limits.prompt_chars.problems(f"the length of {where} ({len(prompt)} characters)", len(prompt))
        return problems


def _first_set(*values: float | None) -> float:
    return next(value for value in values if value is not None)
