"""Variations: Qwen-Image-Edit-2509 edits the reference photo into one view, pose, emotion or framing.

from likeness.profiles import load_profile
from likeness.artifacts import put_file
ref = put_file(Path("ada.jpg"))
item = edit_variation.fn(ref, "side", load_profile("tiny").edit, 0, load_profile("tiny"))
"""

from __future__ import annotations

import hashlib

from likeness.artifacts import ArtifactRef, load_image, put_image
from likeness.catalogue import get_variation
from likeness.config import EditConfig, ModelProfile
from likeness.imaging import square
from likeness.interrupts import stop_between_steps
from likeness.pipelines import get_pipeline, gpu_lock
from likeness.stages import stage_task

STAGE_VERSION = 1


def variation_seed(seed: int, variation_id: str) -> int:
    """A seed per variation, stable across runs and independent of the catalogue's order."""
    digest = hashlib.sha256(f"{seed}:{variation_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


@stage_task("edit-variation", STAGE_VERSION)
def edit_variation(
    reference: ArtifactRef, variation_id: str, config: EditConfig, seed: int, profile: ModelProfile
) -> ArtifactRef:
    """Edit the reference photo into one catalogue variation."""
    import torch

    variation = get_variation(variation_id)
    source = square(load_image(reference), config.size)
    pipe = get_pipeline("editor", profile)
    with gpu_lock:
        pipe.register_to_config(vae_image_area=config.condition_area, vl_image_area=config.vl_condition_area)
        image = pipe(
            image=[source],
            prompt=variation.prompt,
            negative_prompt=" ",
            true_cfg_scale=config.true_cfg_scale,
            num_inference_steps=config.steps,
            height=config.size,
            width=config.size,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=stop_between_steps,
        ).images[0]
    return put_image(image, f"{variation_id}.png")
