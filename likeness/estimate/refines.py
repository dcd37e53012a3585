"""The identity guard's refines as the estimate counts them: what each outcome of its bisection refines, by how large
a face is in a shot (an assumption, by its framing: FACE_SHARE).

    outcomes = guard_outcomes(config.dataset.upscale, (2048, 2048), face_share_of(shot))
"""

from __future__ import annotations

from typing import NamedTuple

from likeness.config import UpscaleConfig
from likeness.dataset.catalogue import Shot
from likeness.dataset.guard import choose_start_step, guard_region
from likeness.media.tiling import tile_grid

# Face-box height as a share of the image height, by the framing a catalogue entry names (an assumption: the box
# square, centred across, its top at a tenth of the height unless that does not fit).
FACE_SHARE = {"full body": 0.08, "upper body": 0.2, "head and shoulders": 0.3, "close-up of the face": 0.5}


class Refine(NamedTuple):
    """One image's refine, for one outcome of the guard: transformer evaluations (a tile and step each), tiles
    refined (a VAE encode and decode each) and identity descriptors."""

    tile_steps: int
    tiles: int
    face_checks: int


def guard_outcomes(upscale: UpscaleConfig, size: tuple[int, int], face_share: float | None) -> list[Refine]:
    """An image's refine under each outcome of the identity guard: the lowest start step that keeps the face, from
    the lowest candidate up, then none. Without a face to guard (`face_share` None), the one refine at
    `upscale.start_step`."""
    width, height = size
    whole = len(tile_grid(width, height, upscale.tile, upscale.overlap))
    if face_share is None:
        return [Refine((upscale.steps - upscale.start_step) * whole, whole, 0)]
    side = round(face_share * height)
    top = min(round(0.1 * height), height - side)
    face_box = ((width - side) // 2, top, (width + side) // 2, top + side)
    region = guard_region(face_box, size, upscale.tile, upscale.overlap)
    region_tiles = len(tile_grid(region[2] - region[0], region[3] - region[1], upscale.tile, upscale.overlap))
    low, high = upscale.start_steps
    candidates = list(range(low, high + 1))
    outcomes = []
    for lowest_kept in [*candidates, None]:

        def distance_at(step: int, lowest_kept: int | None = lowest_kept) -> float:
            return 0.0 if lowest_kept is not None and step >= lowest_kept else 1.0

        choice = choose_start_step(candidates, distance_at, 0.0, 0.0, upscale.start_step)
        steps = sum(upscale.steps - step for step, _ in choice.tries) * region_tiles
        tiles = len(choice.tries) * region_tiles
        if region != (0, 0, width, height):  # else the guard's refine at the chosen step is the result
            steps += (upscale.steps - choice.start_step) * whole
            tiles += whole
        # The descriptor of the unrefined region, of each try, and of the result.
        outcomes.append(Refine(steps, tiles, len(choice.tries) + 2))
    return outcomes


def face_share_of(shot: Shot) -> float | None:
    """The share of the image height the shot's face takes (FACE_SHARE, by framing); None for a hidden face."""
    if shot.face == "hidden":
        return None
    return next((share for framing, share in FACE_SHARE.items() if framing in shot.tags), FACE_SHARE["upper body"])
