"""The render flow: images and videos of the character with its LoRA."""

from __future__ import annotations

from prefect import flow

from likeness.config import ModelProfile, RenderConfig, render_template
from likeness.records import LoraRef, RenderItem
from likeness.run.progress import StageProgress
from tasks.render import render_media


@flow(name="render", log_prints=True)
def render(lora: LoraRef, config: RenderConfig, profile: ModelProfile) -> list[RenderItem]:
    """Render every image prompt as a PNG and every video prompt as an MP4, with the LoRA's best checkpoint."""
    jobs = [("image", prompt) for prompt in config.image_prompts]
    jobs += [("video", prompt) for prompt in config.video_prompts]
    progress = StageProgress("render", len(jobs), artifact_key=f"{lora.trigger}-render")
    items = []
    for kind, template in jobs:
        prompt = render_template(template, trigger=lora.trigger)
        items.append(render_media(lora.best.weights, kind, prompt, config, config.seed, profile, lora.best.low_noise))
        progress.advance(kind)
    return items
