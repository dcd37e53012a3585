"""The identity guard's choices, as pure functions: which start step a refine keeps, and which part of the image it
judges a start step on. `tasks/upscale.py` runs them on the refiner; `likeness.estimate` counts what they cost.

    choice = choose_start_step(range(12, 19), distance_at, baseline=0.31, tolerance=0.05, fallback=16)
    choice.start_step, choice.tries
    guard_tile(face_box, (2048, 2048), tile=1024, overlap=128)  # the refine's own tile around the face, or None
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from likeness.media.tiling import Tile, tile_grid

# How far around the face the guard refines, in face-box sizes: the detector needs the whole head in view.
GUARD_MARGIN = 0.75
# The room a tile of the whole image's grid must leave around the face, in face-box sizes, for the guard to judge on
# it: the detector's window needs a little context past the box (an image's edge is room enough: nothing is cut).
GUARD_TILE_MARGIN = 0.25


class GuardChoice(NamedTuple):
    """The start step the guard chose, and every (start step, distance) it tried, in order."""

    start_step: int
    tries: tuple[tuple[int, float | None], ...]


def choose_start_step(
    candidates: Sequence[int],
    distance_at: Callable[[int], float | None],
    baseline: float | None,
    tolerance: float,
    fallback: int,
) -> GuardChoice:
    """The lowest candidate whose distance is at most `baseline + tolerance`, found by bisection.

    Bisection assumes distance grows as the start step falls; it measures ceil(log2(n + 1)) of n candidates and
    returns a step that passed whose next lower candidate, if measured, failed. A distance of None (no face
    found) fails. If none passes, the measured step that drifted least; without a baseline, `fallback`."""
    steps = sorted(set(candidates))
    if not steps:
        raise ValueError("the guard needs at least one candidate start step")
    if baseline is None:
        return GuardChoice(fallback, ((fallback, distance_at(fallback)),))
    tries: list[tuple[int, float | None]] = []
    low, high = 0, len(steps)
    while low < high:
        middle = (low + high) // 2
        distance = distance_at(steps[middle])
        tries.append((steps[middle], distance))
        if distance is not None and distance <= baseline + tolerance:
            high = middle
        else:
            low = middle + 1
    if low < len(steps):
        return GuardChoice(steps[low], tuple(tries))
    measured = [(distance, -step) for step, distance in tries if distance is not None]
    # No refine kept the face within tolerance: the least drift, and of equal drifts the latest start.
    return GuardChoice(-min(measured)[1] if measured else steps[-1], tuple(tries))


def target_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The size with `long_side` on the longer side and the aspect ratio kept."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def guard_tile(face_box: tuple[int, int, int, int], size: tuple[int, int], tile: int, overlap: int) -> Tile | None:
    """The tile of the whole image's refine grid that holds the face box with `GUARD_TILE_MARGIN` of its size on
    every side (the one with the most room), or None where none does (a close-up's face is larger than a tile).

    Every tile is refined with the same seed from its own pixels alone, so the guard's refine of this tile at the
    start step it keeps is the very tile the whole image's refine blends in: the guard judges the face in the
    context and at the size it is refined in, and the tile is refined once."""
    left, top, right, bottom = face_box
    width, height = size
    need_x, need_y = (right - left) * GUARD_TILE_MARGIN, (bottom - top) * GUARD_TILE_MARGIN

    def room(candidate: Tile) -> float:
        tile_left, tile_top, tile_right, tile_bottom = candidate.box
        # An image's edge leaves the face whole: it is room enough.
        sides_x = [left - tile_left if tile_left > 0 else need_x, tile_right - right if tile_right < width else need_x]
        sides_y = [top - tile_top if tile_top > 0 else need_y, tile_bottom - bottom if tile_bottom < height else need_y]
        return min(min(sides_x) - need_x, min(sides_y) - need_y)

    best = max(tile_grid(width, height, tile, overlap), key=room)  # of equal room, the first
    return best if room(best) >= 0 else None


def guard_region(
    face_box: tuple[int, int, int, int], size: tuple[int, int], tile: int, overlap: int
) -> tuple[int, int, int, int]:
    """The part of the image the guard refines to judge a start step: the face box grown by `GUARD_MARGIN` of its
    size on every side (room for the detector and the refine's context), inside the image; the whole image when
    that part would take as many refine tiles (a close-up), so the guard's refine is the result."""
    region = face_surroundings(face_box, size)
    width, height = size
    tiles = len(tile_grid(region[2] - region[0], region[3] - region[1], tile, overlap))
    return (0, 0, width, height) if tiles >= len(tile_grid(width, height, tile, overlap)) else region


def face_surroundings(face_box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The face box grown by `GUARD_MARGIN` of its size on every side, inside an image of `size`."""
    left, top, right, bottom = face_box
    grow_x, grow_y = round((right - left) * GUARD_MARGIN), round((bottom - top) * GUARD_MARGIN)
    width, height = size
    return max(0, left - grow_x), max(0, top - grow_y), min(width, right + grow_x), min(height, bottom + grow_y)
