"""What a render run makes: one job per prompt, each with its kind, seed and settings, checked before any model
loads.

The run's `RenderConfig` gives the templates (`image_prompts`, `video_prompts`) and the defaults; a prompts file's
entries (`likeness.render.prompt_files.PromptEntry`) replace them, each entry's options replacing the run's settings
for that render alone.

    jobs = plan_renders(config, "Ada", read_prompts_file(Path("prompts.yaml")))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from likeness.config import InvalidSettings, RenderConfig, RenderLimits, render_template
from likeness.inputs import InvalidInput
from likeness.media.video_upscale import VideoMemoryBoundTooSmall, VideoUpscaleConfig, plan_upscale
from likeness.render.prompt_files import PromptEntry

ESRGAN_SCALE = 4


class RenderJob(BaseModel):
    """One image or video to render: its prompt (the trigger word filled in), seed and settings."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["image", "video"]
    prompt: str
    seed: int
    config: RenderConfig


def plan_renders(
    config: RenderConfig,
    trigger: str,
    prompts: Sequence[PromptEntry] | None = None,
    limits: RenderLimits | None = None,
    beyond_limits: bool = False,
) -> list[RenderJob]:
    """The run's renders: the config's templates (`prompts` None), or each entry of `prompts` with its options
    applied (and checked against the profile's `limits`, soft ones passed with `beyond_limits`)."""
    if prompts is None:
        jobs = [("image", template) for template in config.image_prompts]
        jobs += [("video", template) for template in config.video_prompts]
        planned = [
            RenderJob(kind=kind, prompt=render_template(t, trigger=trigger), seed=config.seed, config=config)
            for kind, t in jobs
        ]
    else:
        planned = [_entry_job(config, trigger, n, entry, limits, beyond_limits) for n, entry in enumerate(prompts, 1)]
    for job in planned:
        check_upscale_fits(job)
    return planned


def _entry_job(
    config: RenderConfig,
    trigger: str,
    number: int,
    entry: PromptEntry,
    limits: RenderLimits | None,
    beyond_limits: bool,
) -> RenderJob:
    """The render of prompt `number` of a prompts file, its options replacing the run's settings."""
    kind = entry.kind or ("video" if entry.frames else "image")
    options = {
        "negative_prompt": entry.negative_prompt,
        "lora_scale": entry.lora_scale,
        "fx": entry.fx,
        "video_frames": entry.frames,
    }
    try:
        settings = RenderConfig.model_validate(
            {**config.model_dump(), **{name: value for name, value in options.items() if value is not None}}
        )
        prompt = render_template(entry.prompt, trigger=trigger)
    except (ValidationError, ValueError) as exc:
        reason = (
            "; ".join(InvalidSettings.from_validation_error(exc).problems) if isinstance(exc, ValidationError) else exc
        )
        raise InvalidInput(f"prompt {number} ({entry.prompt[:40]!r}): {reason}") from None
    problems = settings.limit_problems(f"prompt {number}", limits) if limits else []
    problems = [problem for problem in problems if not (problem.soft and beyond_limits)]
    if problems:
        raise InvalidInput("; ".join(problem.text for problem in problems))
    seed = config.seed if entry.seed is None else entry.seed
    return RenderJob(kind=kind, prompt=prompt, seed=seed, config=settings)


def check_upscale_fits(job: RenderJob) -> None:
    """Refuse, before anything renders, a video upscale whose memory bound not even one frame fits."""
    config = job.config
    if job.kind != "video" or config.upscale_long_side is None:
        return
    bound = VideoUpscaleConfig(long_side=config.upscale_long_side, max_memory_mb=config.upscale_memory_mb)
    # The upscaler roles are ESRGAN 4x models; the stage plans again with the loaded model's own scale.
    try:
        plan_upscale((config.size, config.size), ESRGAN_SCALE, bound)
    except VideoMemoryBoundTooSmall as exc:
        raise InvalidInput(
            f"render.upscale_memory_mb={config.upscale_memory_mb} is too little for the video upscale to "
            f"{config.upscale_long_side} px ({exc})"
        ) from None
