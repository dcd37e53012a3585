"""Upscale: ESRGAN 4x (through spandrel), resize to the target size, then a FLUX img2img refine.

The refine starts at `start_step` of `steps` (the seed's "start step" knob): a late start keeps the
character, an early one adds skin and eye detail at the risk of drifting from the face.

    ref = upscale_image.fn(edited, load_profile("tiny").upscale, "ada, front view", 0, load_profile("tiny"))
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from likeness.artifacts import ArtifactRef, load_image, put_image
from likeness.config import ModelProfile, UpscaleConfig
from likeness.interrupts import stop_between_steps
from likeness.pipelines import get_pipeline, gpu_lock
from likeness.stages import stage_task

STAGE_VERSION = 1


def esrgan_upscale(model, image: Image.Image) -> Image.Image:
    """Run a spandrel image model on one RGB image."""
    import torch

    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    parameter = next(model.model.parameters())
    with torch.inference_mode():
        output = model(pixels.to(parameter.device, parameter.dtype)).float().clamp(0, 1)
    array = (output[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


@stage_task("upscale-image", STAGE_VERSION)
def upscale_image(
    image: ArtifactRef, config: UpscaleConfig, prompt: str, seed: int, profile: ModelProfile
) -> ArtifactRef:
    """ESRGAN 4x, resize to `config.size`, then refine with FLUX img2img from `start_step`."""
    import torch

    source = load_image(image)
    upscaler = get_pipeline("upscaler", profile)
    refiner = get_pipeline("refiner", profile)
    with gpu_lock:
        upscaled = esrgan_upscale(upscaler, source).resize((config.size, config.size), Image.Resampling.LANCZOS)
        refined = refiner(
            prompt=prompt,
            image=upscaled,
            strength=config.strength,
            num_inference_steps=config.steps,
            height=config.size,
            width=config.size,
            guidance_scale=config.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=stop_between_steps,
        ).images[0]
    return put_image(refined, image.filename)
