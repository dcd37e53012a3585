"""The render stage's settings (`RenderConfig`): Wan image and video renders with the character LoRA."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

from likeness.config.base import PromptTemplate, Seed
from likeness.config.limits import Problem, Stage


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
    # 0 renders the base model (a comparison); a negative scale would steer away from the character.
    lora_scale: float = Field(default=1.0, ge=0.0)
    # The strength of the video model's step-distillation LoRAs (the profile's `speed_loras`), where it has them.
    speed_lora_scale: float = Field(default=1.0, ge=0.0)
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
        problems = super().limit_problems(path, limits)
        for where, prompt in prompts:
            problems += limits.prompt_chars.problems(f"the length of {where} ({len(prompt)} characters)", len(prompt))
        return problems
