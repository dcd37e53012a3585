"""The render flow: images and videos of the character with its LoRA, scored against the reference."""

from __future__ import annotations

from prefect import flow

from likeness.config import ModelProfile, RenderConfig
from likeness.records import LoraRef, Renders
from likeness.render.jobs import plan_renders
from likeness.render.prompts import PromptEntry
from likeness.run.progress import StageProgress
from likeness.storage.artifacts import ArtifactRef
from tasks.render import render_media
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
) -> Renders:
    """Render each prompt (the config's templates, or `prompts` with their options) with the LoRA's best
    checkpoint; score each against `reference`, upscale the videos when asked, and make a contact sheet."""
    jobs = plan_renders(config, lora.trigger, prompts, profile.limits.render, beyond_limits)
    progress = StageProgress("render", len(jobs), artifact_key=f"{lora.trigger}-render")
    items = []
    for job in jobs:
        item = render_media(lora.best.weights, job.kind, job.prompt, job.config, job.seed, profile, lora.best.low_noise)
        if reference is not None:
            item = score_render(item, reference)
        if job.kind == "video" and job.config.upscale_long_side:
            item = item.model_copy(
                update={"upscaled": upscale_render(item.output, job.config.fps, job.config, profile)}
            )
        items.append(item)
        progress.advance(job.kind)
    return Renders(items=tuple(items), contact_sheet=render_sheet(items, lora.trigger))
