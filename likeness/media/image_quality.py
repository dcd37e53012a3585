"""Image quality figures that curation judges: sharpness, exposure and a perceptual hash for near-duplicates.

Each figure is computed on a normalised copy so that it compares across image sizes:

    sharpness(image)                      # 861 for skimage's astronaut, 11 once blurred by 2 px
    exposure(image.crop(face.box)).mean   # 0.64 for the astronaut's face
    hash_distance(perceptual_hash(a), perceptual_hash(b))   # 0 for a resized or re-encoded copy, 24+ for other photos
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import imagehash
import numpy as np
from PIL import Image

# Sharpness is measured at this long side: fine detail of a 2K image and of a 512 px one then weigh the same.
SHARPNESS_SIDE = 512
# Grey levels (of 255) counted as crushed to black or blown to white.
NEAR_BLACK = 8
NEAR_WHITE = 247


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image at a 512 px long side: low when blurred (or flat and dim)."""
    grey = np.asarray(image.convert("L"))
    height, width = grey.shape
    scale = SHARPNESS_SIDE / max(width, height)
    # Area averaging when shrinking keeps aliasing from passing for detail.
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=interpolation
    )
    return float(cv2.Laplacian(resized, cv2.CV_64F).var())


class Exposure(NamedTuple):
    """Mean luminance (0-1) and the fractions of near-black and near-white pixels."""

    mean: float
    dark: float
    bright: float


def exposure(image: Image.Image) -> Exposure:
    """How bright the image is, and how much of it is crushed to black or blown to white."""
    grey = np.asarray(image.convert("L"))
    if grey.size == 0:
        raise ValueError("cannot measure the exposure of an empty image")
    return Exposure(
        mean=float(grey.mean() / 255),
        dark=float((grey <= NEAR_BLACK).mean()),
        bright=float((grey >= NEAR_WHITE).mean()),
    )


def perceptual_hash(image: Image.Image) -> str:
    """The 64-bit DCT perceptual hash (imagehash.phash) as 16 hex digits."""
    return str(imagehash.phash(image))


def hash_distance(a: str, b: str) -> int:
    """Bits that differ between two perceptual hashes (0-64)."""
    if len(a) != len(b):
        raise ValueError(f"perceptual hashes differ in length: {a!r} and {b!r}")
    return int(imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b))
