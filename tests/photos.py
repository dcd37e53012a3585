"""Real photos for tests, taken at test time from installed packages (nothing is downloaded or committed).

from tests.photos import astronaut, grace_hopper, no_face_photo
face = model.faces(astronaut())[0]
"""

from __future__ import annotations

import functools
from pathlib import Path

from PIL import Image, ImageOps


@functools.cache
def _astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def astronaut() -> Image.Image:
    """Eileen Collins, 512x512 RGB (scikit-image); the detector also reports a small stray 'face' on her flag patch."""
    return _astronaut().copy()


@functools.cache
def _grace_hopper() -> Image.Image:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def grace_hopper() -> Image.Image:
    """Grace Hopper, 512x600 RGB (matplotlib's sample data): another person than the astronaut."""
    return _grace_hopper().copy()


@functools.cache
def _coffee() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.coffee())


def no_face_photo() -> Image.Image:
    """A cup of coffee, 600x400 RGB (scikit-image): a sharp, well-exposed photo without a face."""
    return _coffee().copy()


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """Two photos pasted next to each other on grey, tops aligned: one image with both people in it."""
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height)), (128, 128, 128))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas
