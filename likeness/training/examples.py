"""The examples our trainer learns from, computed once before its first step: each dataset image as a one-frame
video's normalised Wan VAE latents at every training resolution, its face mask as loss weights on the latent grid,
and the text embedding of every caption (and of the empty one, for caption dropout).

    examples, embeddings = cache_examples(pipe, images, resolutions=(512, 256), multiple=16, masks=True)
    with text_encoder_off_the_gpu(pipe):
        ...  # the steps
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from likeness.training.data import TrainingImage

if TYPE_CHECKING:
    import torch

# AI Toolkit's UI default for `mask_min_value`: outside the face still trains, at a tenth of the weight.
MASK_FLOOR = 0.1


class Example(NamedTuple):
    """One cached training example: latents of an image at one resolution, its loss weights, its caption's index."""

    latents: torch.Tensor
    weights: torch.Tensor | None
    caption: int


def _fit(image: Image.Image, long_side: int, multiple: int) -> Image.Image:
    """The image at its own aspect, long side `long_side`, both sides multiples of `multiple` (centre-cropped)."""
    width, height = image.size
    scale = long_side / max(width, height)
    size = (
        max(multiple, round(width * scale / multiple) * multiple),
        max(multiple, round(height * scale / multiple) * multiple),
    )
    return ImageOps.fit(image.convert("RGB"), size, Image.Resampling.LANCZOS)


def _encode(pipe: Any, image: Image.Image) -> torch.Tensor:
    """Normalised Wan VAE latents (1, C, 1, h, w) of the image as a one-frame video."""
    import torch

    vae = pipe.vae
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    video = pixels[None, :, None].to(vae.device, vae.dtype)
    latents = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return (latents - mean) / std


def _mask_weights(mask: Path, size: tuple[int, int], latent_shape: torch.Size) -> torch.Tensor:
    """The mask on the latent grid, mapped onto [MASK_FLOOR, 1] and divided by its mean (only ratios count)."""
    import torch

    grey = ImageOps.fit(Image.open(mask).convert("L"), size, Image.Resampling.BILINEAR)
    grey = grey.resize((latent_shape[-1], latent_shape[-2]), Image.Resampling.BILINEAR)
    weights = MASK_FLOOR + (1 - MASK_FLOOR) * torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)
    return (weights / weights.mean()).view(1, 1, 1, *weights.shape)


def cache_examples(
    pipe: Any, images: list[TrainingImage], resolutions: tuple[int, ...], multiple: int, masks: bool
) -> tuple[list[Example], list[torch.Tensor]]:
    """Latents of every image at every resolution and the embedding of every caption (the last: the empty one)."""
    import torch

    examples = []
    with torch.no_grad():
        captions = [item.caption for item in images] + [""]
        embeddings = [pipe.encode_prompt(c, do_classifier_free_guidance=False)[0] for c in captions]
        for index, item in enumerate(images):
            picture = Image.open(item.image)
            for resolution in resolutions:
                fitted = _fit(picture, resolution, multiple)
                latents = _encode(pipe, fitted)
                weights = None
                if masks and item.mask is not None:
                    weights = _mask_weights(item.mask, fitted.size, latents.shape).to(latents)
                examples.append(Example(latents, weights, index))
    return examples, embeddings


@contextmanager
def text_encoder_off_the_gpu(pipe: Any) -> Iterator[None]:
    """While inside, the pipeline's text encoder waits in CPU memory, where it sat resident on a GPU: training has
    encoded every caption and sample prompt before its first step, and Wan's umt5-xxl (10.6 GiB) makes room for the
    steps' activations. Under offload (accelerate's hooks) it leaves the GPU between calls already."""
    encoder = pipe.text_encoder
    device = encoder.device
    if device.type == "cpu" or getattr(encoder, "_hf_hook", None) is not None:
        yield
        return
    encoder.to("cpu")
    try:
        yield
    finally:
        encoder.to(device)
