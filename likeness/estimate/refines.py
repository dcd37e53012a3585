"""The identity guard's refines as the estimate counts them: what each outcome of its bisection refines, tile by
tile at each tile's own size, by how large a face is in a shot and where (an assumption, by its framing:
FACE_SHARE).

    outcomes = guard_outcomes(config.dataset.upscale, (2048, 2048), face_share_of(shot))
    outcomes[0].tile_steps, outcomes[0].calls
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

from likeness.config import UpscaleConfig
from likeness.dataset.catalogue import Shot
from likeness.dataset.guard import choose_start_step, guard_region, guard_tile
from likeness.media.tiling import tile_grid

# Face-box height as a share of the image height, by the framing a catalogue entry names (an assumption: the box
# square, centred across, its top at a tenth of the height unless that does not fit).
FACE_SHARE = {"full body": 0.08, "upper body": 0.2, "head and shoulders": 0.3, "close-up of the face": 0.5}
# FLUX's VAE downsamples 8x and its transformer packs 2x2 patches: the refine pads a tile's sides to this multiple.
REFINE_MULTIPLE = 16


class TileCalls(NamedTuple):
    """Refine calls on tiles of one size (padded as the refine pads them): how many, and their steps in all (a
    transformer evaluation each)."""

    width: int
    height: int
    calls: int
    steps: int


class Refine(NamedTuple):
    """One image's refine, for one outcome of the guard: its calls by tile size, and identity descriptors."""

    calls: tuple[TileCalls, ...]
    face_checks: int

    @property
    def tile_steps(self) -> int:
        """Transformer evaluations: a tile and step each."""
        return sum(call.steps for call in self.calls)

    @property
    def tiles(self) -> int:
        """Tiles refined: a VAE encode and decode each."""
        return sum(call.calls for call in self.calls)


def guard_outcomes(upscale: UpscaleConfig, size: tuple[int, int], face_share: float | None) -> list[Refine]:
    """An image's refine under each outcome of the identity guard: the lowest start step that keeps the face, from
    the lowest candidate up, then none. Without a face to guard (`face_share` None), the one refine at
    `upscale.start_step`."""
    width, height = size
    whole = _refined_tiles(size, upscale)
    if face_share is None:
        steps = {shape: (upscale.steps - upscale.start_step) * count for shape, count in whole.items()}
        return [Refine(_calls(steps, whole), 0)]
    side = round(face_share * height)
    top = min(round(0.1 * height), height - side)
    face_box = ((width - side) // 2, top, (width + side) // 2, top + side)
    judged = guard_tile(face_box, size, upscale.tile, upscale.overlap) if upscale.guard_on_tile else None
    region = judged.box if judged else guard_region(face_box, size, upscale.tile, upscale.overlap)
    region_tiles = _refined_tiles((region[2] - region[0], region[3] - region[1]), upscale)
    # The whole image's refine blends the judged tile in as the guard refined it at the chosen step.
    rest = whole - region_tiles if judged else whole
    low, high = upscale.start_steps
    candidates = list(range(low, high + 1))
    outcomes = []
    for lowest_kept in [*candidates, None]:

        def distance_at(step: int, lowest_kept: int | None = lowest_kept) -> float:
            return 0.0 if lowest_kept is not None and step >= lowest_kept else 1.0

        choice = choose_start_step(candidates, distance_at, 0.0, 0.0, upscale.start_step)
        steps: Counter[tuple[int, int]] = Counter()
        tiles: Counter[tuple[int, int]] = Counter()
        for step, _ in choice.tries:
            steps.update({shape: (upscale.steps - step) * count for shape, count in region_tiles.items()})
            tiles.update(region_tiles)
        if region != (0, 0, width, height):  # else the guard's refine at the chosen step is the result
            steps.update({shape: (upscale.steps - choice.start_step) * count for shape, count in rest.items()})
            tiles.update(rest)
        # The descriptor of the unrefined region, of each try, and of the result.
        outcomes.append(Refine(_calls(steps, tiles), len(choice.tries) + 2))
    return outcomes


def _refined_tiles(size: tuple[int, int], upscale: UpscaleConfig) -> Counter[tuple[int, int]]:
    """The tiles a refine of an image of `size` calls the pipeline on, by their padded (width, height)."""
    return Counter(
        (_padded(tile.width), _padded(tile.height)) for tile in tile_grid(*size, upscale.tile, upscale.overlap)
    )


def _padded(side: int) -> int:
    return -(-side // REFINE_MULTIPLE) * REFINE_MULTIPLE


def _calls(steps: Mapping[tuple[int, int], int], tiles: Mapping[tuple[int, int], int]) -> tuple[TileCalls, ...]:
    return tuple(
        TileCalls(width, height, tiles[width, height], steps[width, height]) for width, height in sorted(tiles)
    )


def face_share_of(shot: Shot) -> float | None:
    """The share of the image height the shot's face takes (FACE_SHARE, by framing); None for a hidden face."""
    if shot.face == "hidden":
        return None
    return next((share for framing, share in FACE_SHARE.items() if framing in shot.tags), FACE_SHARE["upper body"])
