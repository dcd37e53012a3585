"""Caption: the trigger word, then what the stage knows (view, emotion, framing), then a VLM's words.

caption = caption_image.fn(ref, "ada", "side", load_profile("tiny").caption, load_profile("tiny"))
"""

from __future__ import annotations

from likeness.artifacts import ArtifactRef, load_image
from likeness.catalogue import get_variation
from likeness.config import CaptionConfig, ModelProfile
from likeness.pipelines import get_pipeline, gpu_lock
from likeness.stages import stage_task

STAGE_VERSION = 1
CAPTION_PROMPT = "a photo of"


def describe(processor, model, image, max_new_tokens: int) -> str:
    """The captioner's own description of the image, without the prompt it was given."""
    import torch

    inputs = processor(images=image, text=CAPTION_PROMPT, return_tensors="pt").to(model.device, dtype=model.dtype)
    with torch.inference_mode():
        tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    text = processor.decode(tokens[0], skip_special_tokens=True).strip()
    return text.removeprefix(CAPTION_PROMPT).strip(" ,.")


@stage_task("caption-image", STAGE_VERSION)
def caption_image(
    image: ArtifactRef, trigger: str, variation_id: str, config: CaptionConfig, profile: ModelProfile
) -> str:
    """A training caption that starts with the trigger word."""
    variation = get_variation(variation_id)
    processor, model = get_pipeline("captioner", profile)
    with gpu_lock:
        description = describe(processor, model, load_image(image), config.max_new_tokens)
    parts = [trigger, variation.view, variation.emotion, variation.framing]
    return ", ".join(part for part in (*parts, description) if part)
