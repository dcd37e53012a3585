"""Upscale: ESRGAN 4x in tiles (through spandrel), resize to a long side of `config.size`, then a FLUX img2img
refine in overlapping tiles from a start step the identity guard chooses per image.

With `config.uso`, every refine (the guard's tries too) is conditioned on the character as ByteDance USO does it:
the reference's face and surroundings (`uso_subject`) enter the transformer as subject tokens, through the DiT LoRA
fused into the refiner (likeness.models.uso).

The refine runs the last `steps - start_step` of `steps` steps: a late start keeps the character, an early one
adds skin and eye detail at the risk of drifting from the face. The guard bisects `config.start_steps` for the
lowest start step whose identity distance to the reference stays within `config.identity_tolerance` of the
ESRGAN output's, and records every step it tried. It judges each step on the refine's own tile around the face
(`guard_tile`), then refines the rest of the image at the step it chose and blends that tile in as it was judged.
Where no tile holds the face with room around it (a close-up), or with `config.guard_on_tile` off, it judges on
the face and its surroundings, then refines the whole image at the step it chose (a close-up's surroundings are
the whole image: already done).

    subject = uso_subject.fn(reference, profile.upscale.uso_subject_size)
    result = upscale_image.fn(edited, profile.upscale, "ada, front view", 0, profile, reference_embedding, subject)
    result.image, result.start_step, result.tries
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from likeness.config import ModelProfile, UpscaleConfig
from likeness.dataset.guard import choose_start_step, face_surroundings, guard_region, guard_tile, target_size
from likeness.media.tiling import apply_tiled
from likeness.models.pipelines import get_pipeline, get_uso_encoders, gpu_lock
from likeness.records import UpscaleResult
from likeness.run.interrupts import check_stop, stop_between_steps
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, load_image, put_image

if TYPE_CHECKING:
    from likeness.identity import Face
    from likeness.models.uso import SubjectCondition

STAGE_VERSION = 5


def _esrgan(model: Any, image: Image.Image) -> Image.Image:
    import torch

    check_stop()
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    parameter = next(model.model.parameters())
    with torch.inference_mode():
        output = model(pixels.to(parameter.device, parameter.dtype)).float().clamp(0, 1)
    array = (output[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


def esrgan_upscale(model: Any, image: Image.Image, tile: int | None = None, overlap: int = 0) -> Image.Image:
    """Run a spandrel image model on an RGB image: whole, or in tiles of `tile` px (memory bounded by the tile)."""
    if tile is None:
        return _esrgan(model, image)
    return apply_tiled(image, partial(_esrgan, model), tile, overlap, scale=model.scale)


def main_face_of(image: Image.Image, reference: tuple[float, ...] | None) -> Face | None:
    """The image's main face, when there is a reference to compare it with."""
    if reference is None:
        return None
    from likeness.identity import get_identity_model, main_face

    return main_face(get_identity_model().faces(image))


def face_distance(image: Image.Image, reference: tuple[float, ...] | None) -> float | None:
    """Identity distance of the image's main face to `reference`; None without a reference or a face."""
    from likeness.identity import identity_distance

    face = main_face_of(image, reference)
    return identity_distance(face.embedding, reference) if face and reference else None


def _prompt_inputs(refiner: Any, prompt: str) -> dict[str, Any]:
    """The prompt encoded once per image, so each tile's call skips (and does not reload) the text encoders."""
    if "pooled_prompt_embeds" in inspect.signature(refiner.__call__).parameters:
        embeds, pooled, _ = refiner.encode_prompt(prompt=prompt, prompt_2=None)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    embeds, _ = refiner.encode_prompt(prompt=prompt)
    return {"prompt_embeds": embeds}


def refine(
    refiner: Any,
    image: Image.Image,
    prompt_inputs: dict[str, Any],
    config: UpscaleConfig,
    start_step: int,
    seed: int,
    subject: SubjectCondition | None = None,
    done: dict[tuple[int, int, int, int], Image.Image] | None = None,
) -> Image.Image:
    """FLUX img2img from `start_step` on overlapping tiles of `image` (whole if it fits one), each with `seed`;
    conditioned on USO's `subject` tokens when given. `done`: tiles already refined at `start_step`, by box."""
    import torch

    from likeness.models.uso import conditioned

    multiple = refiner.vae_scale_factor * 2
    # FLUX.2 klein refines through its inpainting pipeline: a white mask repaints everything, i.e. img2img.
    masked = "mask_image" in inspect.signature(refiner.__call__).parameters

    def refine_tile(tile: Image.Image) -> Image.Image:
        # A side shorter than the tile may not be a multiple of the VAE's: mirror-pad it, refine, crop back.
        padded = np.pad(
            np.asarray(tile),
            ((0, -tile.height % multiple), (0, -tile.width % multiple), (0, 0)),
            mode="symmetric",
        )
        source = Image.fromarray(padded)
        extra = {"mask_image": Image.new("L", source.size, 255)} if masked else {}
        with conditioned(refiner.transformer, subject) if subject else nullcontext():
            output = refiner(
                **prompt_inputs,
                **extra,
                image=source,
                strength=config.strength_at(start_step),
                num_inference_steps=config.steps,
                height=source.height,
                width=source.width,
                guidance_scale=config.guidance_scale,
                # The same seed for every tile: neighbours get the same noise statistics, so their detail matches.
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=stop_between_steps,
            ).images[0]
        return output.crop((0, 0, tile.width, tile.height))

    with gpu_lock:
        return apply_tiled(image, refine_tile, config.tile, config.overlap, done=done)


@stage_task("uso-subject", STAGE_VERSION, gpu=False)
def uso_subject(reference: ArtifactRef, long_side: int) -> ArtifactRef:
    """The reference's face and surroundings (the whole photo where no face is found) at USO's subject size."""
    from likeness.identity import get_identity_model, main_face
    from likeness.models.uso import subject_image

    photo = load_image(reference).convert("RGB")
    face = main_face(get_identity_model().faces(photo))
    crop = photo.crop(face_surroundings(face.box, photo.size)) if face else photo
    return put_image(subject_image(crop, long_side), "uso-subject.png")


@stage_task("upscale-image", STAGE_VERSION)
def upscale_image(
    image: ArtifactRef,
    config: UpscaleConfig,
    prompt: str,
    seed: int,
    profile: ModelProfile,
    reference: tuple[float, ...] | None,
    subject: ArtifactRef | None = None,
) -> UpscaleResult:
    """ESRGAN 4x, resize to a long side of `config.size`, refine from the start step the identity guard picks
    (conditioned on USO's `subject` when given)."""
    from likeness.models.uso import encode_subject

    source = load_image(image)
    upscaler = get_pipeline("upscaler", profile)
    refiner = get_pipeline("refiner", profile)
    encoders = get_uso_encoders(profile) if subject and config.uso_style else None
    with gpu_lock:
        upscaled = esrgan_upscale(upscaler, source, config.esrgan_tile, config.esrgan_overlap)
        prompt_inputs = _prompt_inputs(refiner, prompt)
        condition = encode_subject(refiner, load_image(subject), encoders) if subject else None
    upscaled = upscaled.resize(target_size(*source.size, config.size), Image.Resampling.LANCZOS)
    face = main_face_of(upscaled, reference)
    if face is None or reference is None:
        # Nothing to guard: the configured start step, and what distance there is to record.
        refined = refine(refiner, upscaled, prompt_inputs, config, config.start_step, seed, condition)
        distance = face_distance(refined, reference)
        return UpscaleResult(
            image=put_image(refined, image.filename),
            start_step=config.start_step,
            pre_refine_distance=None,
            identity_distance=distance,
            tries=((config.start_step, distance),),
            uso_subject=subject,
        )
    # The guard judges each start step on the refine's tile around the face, or else on the face and its
    # surroundings: a tile or a few per try instead of the whole image.
    judged = guard_tile(face.box, upscaled.size, config.tile, config.overlap) if config.guard_on_tile else None
    region = judged.box if judged else guard_region(face.box, upscaled.size, config.tile, config.overlap)
    crop = upscaled.crop(region)
    baseline = face_distance(crop, reference)

    tried: dict[int, Image.Image] = {}

    def distance_at(start_step: int) -> float | None:
        tried[start_step] = refine(refiner, crop, prompt_inputs, config, start_step, seed, condition)
        return face_distance(tried[start_step], reference)

    low, high = config.start_steps
    choice = choose_start_step(
        range(low, high + 1), distance_at, baseline, config.identity_tolerance, config.start_step
    )
    if region == (0, 0, *upscaled.size):
        refined = tried[choice.start_step]  # the guard's refine at the chosen step is the whole image's
    else:
        done = {region: tried[choice.start_step]} if judged else None
        refined = refine(refiner, upscaled, prompt_inputs, config, choice.start_step, seed, condition, done)
    return UpscaleResult(
        image=put_image(refined, image.filename),
        start_step=choice.start_step,
        pre_refine_distance=baseline,
        identity_distance=face_distance(refined, reference),
        tries=choice.tries,
        uso_subject=subject,
    )
