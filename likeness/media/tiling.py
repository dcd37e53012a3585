"""Tiled image processing: cut an image into overlapping tiles, process each, blend them back without seams.

A model that cannot take a whole 2K image at once (memory, or the size it was trained at) runs on tiles.
Neighbouring tiles overlap; in each overlap the two tiles cross-fade linearly, so a tile's edge, where the
model saw the least context, weighs least and no seam shows. The blend is a normalised weighted mean, so
a function that changes nothing gives its input back exactly.

    from likeness.media.tiling import apply_tiled
    big = apply_tiled(image, lambda tile: tile.resize((tile.width * 4, tile.height * 4)), tile=256, overlap=32, scale=4)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Tile:
    """A rectangle of the image, in pixels."""

    left: int
    top: int
    width: int
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as PIL's `crop` takes it."""
        return self.left, self.top, self.left + self.width, self.top + self.height


def spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one axis: the fewest tiles of `tile` px overlapping by at least `overlap`.

    An axis no longer than `tile` is one span of the whole length; otherwise the spans are spread evenly, the
    first at 0 and the last ending at `length`."""
    if tile <= 0 or length <= 0:
        raise ValueError(f"tile ({tile}) and length ({length}) must be positive")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and below the tile size ({tile})")
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [(round(index * (length - tile) / (count - 1)), tile) for index in range(count)]


def tile_grid(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles covering a `width` x `height` image, row by row."""
    return [
        Tile(left, top, tile_width, tile_height)
        for top, tile_height in spans(height, tile, overlap)
        for left, tile_width in spans(width, tile, overlap)
    ]


def _ramps(axis: list[tuple[int, int]], scale: int) -> list[np.ndarray]:
    """Per span, its weights along the axis at `scale`: rising across the overlap with the previous span,
    falling across the overlap with the next, 1 elsewhere; never 0, so every pixel has weight."""
    weights = []
    for index, (start, size) in enumerate(axis):
        position = np.arange(size * scale, dtype=np.float32) + 0.5
        weight = np.ones(size * scale, dtype=np.float32)
        # Tiles that only touch (no overlap) need no ramp.
        rising = (axis[index - 1][0] + axis[index - 1][1] - start) * scale if index > 0 else 0
        falling = (start + size - axis[index + 1][0]) * scale if index < len(axis) - 1 else 0
        if rising > 0:
            weight = np.minimum(weight, position / rising)
        if falling > 0:
            weight = np.minimum(weight, (size * scale - position) / falling)
        weights.append(weight)
    return weights


def apply_tiled(
    image: Image.Image,
    function: Callable[[Image.Image], Image.Image],
    tile: int,
    overlap: int,
    scale: int = 1,
    done: Mapping[tuple[int, int, int, int], Image.Image] | None = None,
) -> Image.Image:
    """`function` applied to overlapping tiles of `image` and blended; it must return each tile `scale` times
    larger. An image that fits in one tile is passed whole. `done`: outputs already computed, by their tile's box
    (`Tile.box`), used in place of calling `function` on those tiles."""
    image = image.convert("RGB")
    done = done or {}
    rows, columns = spans(image.height, tile, overlap), spans(image.width, tile, overlap)

    def output(box: tuple[int, int, int, int]) -> Image.Image:
        piece = image.crop(box)
        return _checked(done[box] if box in done else function(piece), piece.size, scale)

    if len(rows) == len(columns) == 1:
        return output((0, 0, image.width, image.height))
    row_weights, column_weights = _ramps(rows, scale), _ramps(columns, scale)
    total = np.zeros((image.height * scale, image.width * scale, 3), dtype=np.float32)
    weight_sum = np.zeros((image.height * scale, image.width * scale, 1), dtype=np.float32)
    for (top, height), row_weight in zip(rows, row_weights, strict=True):
        for (left, width), column_weight in zip(columns, column_weights, strict=True):
            pixels = np.asarray(output((left, top, left + width, top + height)), dtype=np.float32)
            weight = np.outer(row_weight, column_weight)[..., None]
            region = np.s_[top * scale : (top + height) * scale, left * scale : (left + width) * scale]
            total[region] += pixels * weight
            weight_sum[region] += weight
    return Image.fromarray(np.clip(np.rint(total / weight_sum), 0, 255).astype(np.uint8))


def _checked(output: Image.Image, size: tuple[int, int], scale: int) -> Image.Image:
    expected = (size[0] * scale, size[1] * scale)
    if output.size != expected:
        raise ValueError(
            f"the tile function returned {output.width}x{output.height} for a {size[0]}x{size[1]} tile "
            f"at scale {scale}; expected {expected[0]}x{expected[1]}"
        )
    return output.convert("RGB")
