"""Variations: Qwen-Image-Edit-2511 edits the reference photo into one shot of the dataset.

The flow gives each shot its prompt and size (from the catalogue). A try-on or a pose transfer passes a
second image after the reference, a garment or a pose reference: the editor takes its inputs as one list,
so a prompt can speak of the person in image 1 and the coat in image 2.

    profile = load_profile("tiny")
    images = [put_file(Path("ada.jpg")), put_file(Path("coat.jpg"))]
    prompt = "Dress the person in image 1 in the coat from image 2."
    edited = edit_variation.fn(images, prompt, 48, 64, profile.edit, 7, profile, "tryon-coat.png")
"""

from __future__ import annotations

from likeness.config import EditConfig, ModelProfile
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.run.interrupts import stop_between_steps
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_image

STAGE_VERSION = 2


@stage_task("edit-variation", STAGE_VERSION)
def edit_variation(
    images: list[ArtifactRef],
    prompt: str,
    width: int,
    height: int,
    config: EditConfig,
    seed: int,
    profile: ModelProfile,
    filename: str,
) -> ArtifactRef:
    """Edit the reference, `images[0]`, with any second inputs after it, into a `width` x `height` image."""
    import torch

    if not images:
        raise ValueError("an edit needs the reference image")
    pipe = get_pipeline("editor", profile)
    # diffusers rounds other sizes down without a word, and the shot would come out smaller than asked.
    multiple = pipe.vae_scale_factor * 2
    if width % multiple or height % multiple:
        raise ValueError(f"an edit's size must be multiples of {multiple} px, got {width}x{height}")
    sources = [load_image(image) for image in images]
    with gpu_lock:
        pipe.register_to_config(vae_image_area=config.condition_area, vl_image_area=config.vl_condition_area)
        edited = pipe(
            image=sources,
            prompt=prompt,
            # True CFG runs only with a negative prompt, and diffusers warns of one passed with CFG off.
            negative_prompt=" " if config.true_cfg_scale > 1 else None,
            true_cfg_scale=config.true_cfg_scale,
            num_inference_steps=config.steps,
            width=width,
            height=height,
            generator=torch.Generator("cpu").manual_seed(seed),
            callback_on_step_end=stop_between_steps,
        ).images[0]
    return put_image(edited, filename)
