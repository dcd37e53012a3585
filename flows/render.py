"""The render flow: images and videos of the character with its LoRA, scored against the reference."""

from __future__ import annotations

from prefect import flow

from likeness.config import ModelProfile, RenderConfig
from likeness.records import LoraRef, RenderItem, Renders
from likeness.render.jobs import plan_renders
from likeness.render.prompt_files import PromptEntry
from likeness.render.strengths import render_settings
from likeness.run.memory import memory_for_renders
from likeness.run.progress import StageProgress
from likeness.storage.artifacts import ArtifactRef
from tasks.render import animate_still, render_media
from tasks.render_review import render_sheet, score_render
from tasks.upscale_video import upscale_render


@flow(name="render", log_prints=True)
def render(
    lora: LoraRef,
    config: RenderConfig,
    profile: ModelProfile,
    reference: ArtifactRef | None = None,
    prompts: list[PromptEntry] | None = None,
    beyond_limits: bool = False,
    animate: ArtifactRef | None = None,
    animate_prompt: str | None = None,
) -> Renders:
    """Render each prompt (the config's templates, or `prompts` with their options) with the LoRA's best
    checkpoint, at the strengths its probe chose where the config leaves them open, and bring the still `animate`
    to life with `animate_prompt`; score each against `reference`, upscale the videos when asked, and make a
    contact sheet."""
    config = render_settings(config, lora)
    jobs = plan_renders(config, lora.trigger, prompts, profile.limits.render, beyond_limits)
    profile = memory_for_renders(profile, config, jobs, animate is not None, say=print)
    progress = StageProgress("render", len(jobs) + (animate is not None), f"{lora.trigger}-render", unit="renders")

    def reviewed(item: RenderItem, settings: RenderConfig) -> RenderItem:
        if reference is not None:
            item = score_render(item, reference)
        if item.kind == "video" and settings.upscale_long_side:
            item = item.model_copy(update={"upscaled": upscale_render(item.output, settings.fps, settings, profile)})
        progress.advance(item.kind)
        return item

    best = lora.best
    items = [
        reviewed(
            render_media(best.weights, job.kind, job.prompt, job.config, job.seed, profile, best.low_noise), job.config
        )
        for job in jobs
    ]
    if animate is not None:
        prompt = animate_prompt or f"{lora.trigger} comes to life, gentle motion"
        items.append(
            reviewed(animate_still(animate, best.weights, prompt, config, config.seed, profile, best.low_noise), config)
        )
    return Renders(items=tuple(items), contact_sheet=render_sheet(items, lora.trigger))
