"""Loss masks for training: white over the character's face, black elsewhere, as AI Toolkit reads them.

What AI Toolkit does with a mask, read in ostris/ai-toolkit (commit 27a03a9, 2026-08):
- `toolkit/dataloader_mixins.py`, `MaskFileItemDTOMixin`: with a dataset's `mask_path` set, the mask of `NAME.EXT`
  is the first of `NAME.jpg`, `.jpeg`, `.png`, `.webp` in that folder (same stem). It is EXIF-transposed,
  converted to RGB then grey ("L"), flipped with the image, blurred a little at random, resized to the image's
  bucket size and cropped like the image: so it must have the image's size (at least its aspect ratio). Grey
  0-255 becomes 0-1 and is then mapped linearly onto [`mask_min_value`, 1]: white is full weight, black
  `mask_min_value` (`toolkit/config_modules.py`: default 0.0; the UI's default 0.1).
- `extensions_built_in/sd_trainer/SDTrainer.py`: the mask, resized to the latents, multiplies the loss after being
  divided by its mean over the batch, so only relative weights count; an all-black mask with `mask_min_value` 0
  divides by zero.
- `toolkit/data_transfer_object/data_loader.py`: in a batch where some images have masks, an image without one
  gets an all-zero mask, i.e. no loss at all.
- `toolkit/data_loader.py`: every image under the dataset folder trains, sub-folders included (not dot-folders nor
  `_controls`), so the mask folder must lie outside the dataset folder.

Hence: black outside the face (the floor is the trainer config's `mask_min_value`, e.g. 0.1-0.3, so the body and
scene still train), a mask file for every image, and all white (equal weight everywhere) when no face was found.

    face_mask(image.size, face).save(masks_dir / f"{stem}.png")

No mask of the whole person: OpenCV's GrabCut seeded with the face box and a body-shaped region took the flag,
the shuttle and the sky of the astronaut photo along with the person, failed outright on a close portrait (no
background left to sample) and took about 1 s per 512 px image; a robust person mask needs a segmentation model.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageFilter

from likeness.identity import Face

# The dlib box runs from the brows to the chin; the ellipse grows it to take in hair, ears and jaw.
FACE_WIDTH_GROWTH = 1.6
FACE_HEIGHT_GROWTH = 2.0
# The ellipse's centre sits this many box heights above the box's centre: more hair above than neck below.
FACE_CENTRE_RAISE = 0.2
# Feathering, as a fraction of the box width: the weight fades in instead of stepping at an edge.
FEATHER = 0.12


def face_mask(size: tuple[int, int], face: Face | None) -> Image.Image:
    """A grey "L" loss mask of the given size: a feathered white ellipse over the face, or all white without one."""
    width, height = size
    if face is None:
        return Image.new("L", size, 255)
    left, top, right, bottom = face.box
    box_width, box_height = max(1, right - left), max(1, bottom - top)
    angle = _roll(face)
    # Centre of the box, raised towards the top of the head along the face's own vertical axis.
    raise_by = FACE_CENTRE_RAISE * box_height
    centre = (
        (left + right) / 2 + raise_by * math.sin(math.radians(angle)),
        (top + bottom) / 2 - raise_by * math.cos(math.radians(angle)),
    )
    axes = (round(box_width * FACE_WIDTH_GROWTH / 2), round(box_height * FACE_HEIGHT_GROWTH / 2))
    canvas = np.zeros((height, width), np.uint8)
    cv2.ellipse(canvas, (round(centre[0]), round(centre[1])), axes, angle, 0, 360, 255, thickness=-1)
    mask = Image.fromarray(canvas)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, FEATHER * box_width)))


def _roll(face: Face) -> float:
    """The head's tilt in degrees (clockwise in image pixels) from the line through the eyes, 0 without landmarks."""
    if len(face.landmarks) != 5:
        return 0.0
    # dlib's 5 points: 0-1 one eye's corners, 2-3 the other's, 4 the base of the nose.
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = face.landmarks[:4]
    first, second = ((x0 + x1) / 2, (y0 + y1) / 2), ((x2 + x3) / 2, (y2 + y3) / 2)
    left_eye, right_eye = sorted((first, second))
    return math.degrees(math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
