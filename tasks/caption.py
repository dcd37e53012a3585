"""Caption: the trigger word, then the shot's catalogue tags, then a VLM's sentence on what varies.

The captioner (Qwen3-VL, or JoyCaption) is asked about pose, expression, clothing, background, light
and framing, and not about the face or other fixed traits, which the trigger word should absorb.

    caption = caption_image.fn(ref, "ada", ["side view", "full body"], profile.caption, profile)
    # -> "ada, side view, full body, standing with arms crossed against a plain grey wall, soft light"
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from likeness.config import CaptionConfig, ModelProfile
from likeness.dataset.captions import caption_messages, caption_prompt, compose_caption
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image

STAGE_VERSION = 2


def describe(processor: Any, model: Any, image: Image.Image, prompt: str, max_new_tokens: int) -> str:
    """The captioner's answer to `prompt` about `image`, decoded greedily (the same image gets the same words)."""
    import torch

    chat = processor.apply_chat_template(
        caption_messages(model.config.model_type, prompt), tokenize=False, add_generation_prompt=True
    )
    inputs = processor(text=[chat], images=[image], return_tensors="pt").to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    with torch.inference_mode():
        # The repos' generation configs sample (temperature, top-k, top-p): greedy needs those unset.
        tokens = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_k=None, top_p=None
        )
    return processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


@stage_task("caption-image", STAGE_VERSION)
def caption_image(
    image: ArtifactRef, trigger: str, tags: list[str], config: CaptionConfig, profile: ModelProfile
) -> str:
    """A training caption: the trigger word, the shot's tags, the captioner's description cut to the word limit."""
    processor, model = get_pipeline("captioner", profile)
    prompt = caption_prompt(config.prompt, config.max_words)
    with gpu_lock:
        description = describe(processor, model, load_image(image), prompt, config.max_new_tokens)
    return compose_caption(trigger, tags, description, config.max_words)
