"""Pure parts of the upscale stage, without models: the identity guard's bisection, the target size, tiling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from likeness.dataset.guard import GuardChoice, choose_start_step, target_size
from likeness.media.tiling import apply_tiled, tile_grid


class Recorder:
    """A fake distance function of the start step that records every step it is asked about."""

    def __init__(self, distance) -> None:
        self.distance = distance
        self.calls: list[int] = []

    def __call__(self, step: int) -> float | None:
        self.calls.append(step)
        return self.distance(step)


def drifting(step: int) -> float:
    """Distance that grows as the start step falls: 0.30 at step 20, 0.01 more per step earlier."""
    return 0.30 + 0.01 * (20 - step)


@pytest.mark.parametrize("count", [1, 3, 7, 15])
@pytest.mark.parametrize("passing_fraction", [0.0, 0.3, 0.5, 1.0])
def test_guard_finds_the_lowest_passing_step_in_log_measurements(count: int, passing_fraction: float) -> None:
    candidates = list(range(20 - count + 1, 21))
    # Steps at or above `lowest_ok` pass: distance <= baseline + tolerance.
    lowest_ok = candidates[min(count - 1, round(count * (1 - passing_fraction)))]
    threshold = drifting(lowest_ok)
    distance_at = Recorder(drifting)

    choice = choose_start_step(candidates, distance_at, baseline=threshold - 0.05, tolerance=0.05, fallback=99)

    assert isinstance(choice, GuardChoice)
    assert choice.start_step == lowest_ok
    # 2^k - 1 candidates take exactly k measurements, whatever passes.
    assert len(distance_at.calls) == math.ceil(math.log2(count + 1))
    assert choice.tries == tuple((step, drifting(step)) for step in distance_at.calls)
    assert len(set(distance_at.calls)) == len(distance_at.calls)


@pytest.mark.parametrize("count", [2, 4, 5, 6, 10, 16, 25])
def test_guard_measures_at_most_log_candidates_for_any_count(count: int) -> None:
    candidates = list(range(40 - count + 1, 41))
    for lowest_ok in candidates:
        distance_at = Recorder(drifting)
        choice = choose_start_step(candidates, distance_at, drifting(lowest_ok), 0.0, fallback=99)
        assert choice.start_step == lowest_ok
        assert len(distance_at.calls) <= math.ceil(math.log2(count + 1))


def test_guard_ignores_candidate_order_and_repeats() -> None:
    distance_at = Recorder(drifting)
    choice = choose_start_step([18, 12, 14, 12, 16, 13, 17, 15, 19], distance_at, drifting(15), 0.0, fallback=99)
    assert choice.start_step == 15
    assert len(distance_at.calls) <= math.ceil(math.log2(8 + 1))


def test_guard_records_its_tries_in_order() -> None:
    distance_at = Recorder(drifting)
    # Candidates 10..16: bisection looks at 13, then 11 (13 passed), then 12 (11 failed).
    choice = choose_start_step(range(10, 17), distance_at, baseline=drifting(12), tolerance=0.0, fallback=99)
    assert distance_at.calls == [13, 11, 12]
    assert choice == GuardChoice(12, ((13, drifting(13)), (11, drifting(11)), (12, drifting(12))))


def test_guard_without_a_pass_returns_the_least_drift() -> None:
    # Non-monotone distances where nothing passes: the least drift measured wins.
    distances = {10: 0.9, 11: 0.8, 12: 0.95, 13: 0.7, 14: 0.85, 15: 0.9, 16: 0.75}
    distance_at = Recorder(distances.__getitem__)
    choice = choose_start_step(range(10, 17), distance_at, baseline=0.3, tolerance=0.05, fallback=99)
    assert distance_at.calls == [13, 15, 16]
    assert choice.start_step == 13
    assert [step for step, _ in choice.tries] == [13, 15, 16]


def test_guard_without_a_pass_prefers_the_latest_start_on_equal_drift() -> None:
    distance_at = Recorder(lambda step: 0.8)
    choice = choose_start_step(range(10, 17), distance_at, baseline=0.3, tolerance=0.05, fallback=99)
    assert choice.start_step == max(distance_at.calls) == 16


def test_guard_counts_no_face_as_a_failure() -> None:
    # Steps below 14 lose the face entirely; 14 and up keep it within tolerance.
    distance_at = Recorder(lambda step: None if step < 14 else 0.3)
    choice = choose_start_step(range(10, 17), distance_at, baseline=0.3, tolerance=0.0, fallback=99)
    assert choice.start_step == 14
    assert (14, 0.3) in choice.tries
    assert any(distance is None for _, distance in choice.tries)


def test_guard_with_no_face_anywhere_returns_the_latest_start() -> None:
    distance_at = Recorder(lambda step: None)
    choice = choose_start_step(range(10, 17), distance_at, baseline=0.3, tolerance=0.05, fallback=99)
    assert choice.start_step == 16
    assert all(distance is None for _, distance in choice.tries)


def test_guard_prefers_a_face_over_none_when_nothing_passes() -> None:
    distance_at = Recorder(lambda step: 0.9 if step == 13 else None)
    choice = choose_start_step(range(10, 17), distance_at, baseline=0.3, tolerance=0.05, fallback=99)
    assert choice.start_step == 13


def test_guard_without_a_baseline_measures_only_the_fallback() -> None:
    distance_at = Recorder(drifting)
    choice = choose_start_step(range(10, 17), distance_at, baseline=None, tolerance=0.05, fallback=14)
    assert distance_at.calls == [14]
    assert choice == GuardChoice(14, ((14, drifting(14)),))


def test_guard_refuses_empty_candidates() -> None:
    distance_at = Recorder(drifting)
    for baseline in (0.3, None):
        with pytest.raises(ValueError, match="at least one candidate"):
            choose_start_step([], distance_at, baseline=baseline, tolerance=0.05, fallback=14)
    assert distance_at.calls == []


@pytest.mark.parametrize(
    ("width", "height", "long_side", "expected"),
    [
        (1024, 1024, 2048, (2048, 2048)),
        (832, 1216, 2048, (1401, 2048)),
        (1216, 832, 2048, (2048, 1401)),
        (4096, 2048, 1024, (1024, 512)),
        (600, 400, 1536, (1536, 1024)),
        (3000, 1, 300, (300, 1)),
    ],
)
def test_target_size_puts_the_long_side_on_the_longer_side_and_keeps_aspect(
    width: int, height: int, long_side: int, expected: tuple[int, int]
) -> None:
    size = target_size(width, height, long_side)
    assert size == expected
    assert max(size) == long_side
    assert (size[0] >= size[1]) == (width >= height)
    if min(size) > 1:
        assert size[0] / size[1] == pytest.approx(width / height, rel=2 / min(size))


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random RGB noise: any misplaced or blended pixel shows."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def axis_count(length: int, tile: int, overlap: int) -> int:
    """Tiles along an axis: one when it fits, else the fewest that overlap by at least `overlap`."""
    return 1 if length <= tile else math.ceil((length - overlap) / (tile - overlap))


class TileFunction:
    """A tile function that records the size of every tile it is given."""

    def __init__(self, function) -> None:
        self.function = function
        self.sizes: list[tuple[int, int]] = []

    def __call__(self, tile: Image.Image) -> Image.Image:
        self.sizes.append(tile.size)
        return self.function(tile)


def doubled(image: Image.Image) -> Image.Image:
    return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)


SIZES = [
    pytest.param(300, 200, 128, 32, id="3x2-tiles"),
    pytest.param(257, 129, 128, 0, id="no-overlap-uneven"),
    pytest.param(100, 80, 128, 16, id="smaller-than-a-tile"),
    pytest.param(128, 128, 128, 16, id="exactly-one-tile"),
    pytest.param(400, 90, 128, 48, id="one-row"),
    pytest.param(150, 150, 64, 60, id="overlap-near-tile"),
    pytest.param(333, 211, 96, 17, id="odd-sizes"),
]


@pytest.mark.parametrize(("width", "height", "tile", "overlap"), SIZES)
def test_tiling_an_identity_function_gives_the_input_back_exactly(
    width: int, height: int, tile: int, overlap: int
) -> None:
    image = photo(width, height)
    function = TileFunction(lambda piece: piece)
    output = apply_tiled(image, function, tile=tile, overlap=overlap)
    assert output.size == image.size
    assert np.array_equal(np.asarray(output), np.asarray(image))
    assert len(function.sizes) == axis_count(width, tile, overlap) * axis_count(height, tile, overlap)
    for tile_width, tile_height in function.sizes:
        assert tile_width == (width if width <= tile else tile)
        assert tile_height == (height if height <= tile else tile)


@pytest.mark.parametrize(("width", "height", "tile", "overlap"), SIZES)
def test_tiling_a_2x_function_equals_applying_it_whole(width: int, height: int, tile: int, overlap: int) -> None:
    image = photo(width, height, seed=1)
    function = TileFunction(doubled)
    output = apply_tiled(image, function, tile=tile, overlap=overlap, scale=2)
    assert output.size == (width * 2, height * 2)
    assert np.array_equal(np.asarray(output), np.asarray(doubled(image)))
    assert len(function.sizes) == axis_count(width, tile, overlap) * axis_count(height, tile, overlap)
    # Every tile fits in `tile` px, except along an axis shorter than a tile, where it spans the whole axis.
    for tile_width, tile_height in function.sizes:
        assert tile_width == (width if width <= tile else tile)
        assert tile_height == (height if height <= tile else tile)


def test_an_image_that_fits_in_one_tile_is_passed_whole() -> None:
    image = photo(100, 80)
    seen: list[Image.Image] = []

    def function(piece: Image.Image) -> Image.Image:
        seen.append(piece)
        return piece

    apply_tiled(image, function, tile=128, overlap=16)
    assert len(seen) == 1
    assert np.array_equal(np.asarray(seen[0]), np.asarray(image))


def test_a_tile_function_returning_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="expected 256x256"):
        apply_tiled(photo(300, 200), lambda piece: piece, tile=128, overlap=32, scale=2)


def test_overlapping_tiles_blend_without_seams() -> None:
    # 160 px = 64 + 2 x 48: a 3x3 grid of 64 px tiles overlapping by exactly 16 px.
    tile, overlap = 64, 16
    image = Image.new("RGB", (160, 160), (40, 40, 40))
    offsets: list[int] = []

    def brighten(piece: Image.Image) -> Image.Image:
        offset = 20 * len(offsets)  # every tile a different constant: 0, 20, ... 160
        offsets.append(offset)
        return Image.fromarray((np.asarray(piece, dtype=np.int16) + offset).astype(np.uint8))

    for scale in (1, 2):
        offsets.clear()
        function = TileFunction(doubled if scale == 2 else (lambda piece: piece))
        output = apply_tiled(
            image, lambda piece, f=function: brighten(f(piece)), tile=tile, overlap=overlap, scale=scale
        )
        assert len(offsets) == 9
        pixels = np.asarray(output, dtype=np.int16)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
        grey = pixels[..., 0]
        assert grey.min() >= 40 + min(offsets) and grey.max() <= 40 + max(offsets)
        # Away from the overlaps each tile's own constant shows unchanged (corners and the middle tile's centre).
        assert grey[0, 0] == 40 + offsets[0]
        assert grey[-1, -1] == 40 + offsets[-1]
        assert grey[80 * scale, 80 * scale] == 40 + offsets[4]
        # Hard seams would jump by 20 (left-right) or 60 (top-bottom) between neighbours; a cross-fade over
        # 16 px (32 at 2x) moves at most 60 / 16 per pixel, plus rounding.
        steepest = 60 / (overlap * scale) + 1
        assert np.abs(np.diff(grey, axis=0)).max() <= steepest
        assert np.abs(np.diff(grey, axis=1)).max() <= steepest


def test_tiles_already_computed_are_blended_in_without_calling_the_function_again() -> None:
    image = photo(333, 211, seed=2)
    grid = tile_grid(333, 211, 96, 17)
    first = TileFunction(doubled)
    whole = apply_tiled(image, first, tile=96, overlap=17, scale=2)
    # The outputs of two tiles, computed earlier as the function computes them: the same image, two calls fewer.
    done = {grid[4].box: doubled(image.crop(grid[4].box)), grid[-1].box: doubled(image.crop(grid[-1].box))}
    second = TileFunction(doubled)
    reused = apply_tiled(image, second, tile=96, overlap=17, scale=2, done=done)
    assert len(second.sizes) == len(first.sizes) - 2 == len(grid) - 2
    assert np.array_equal(np.asarray(reused), np.asarray(whole))
    # What is blended in is the given output, whatever it is: a black tile darkens its part of the image.
    black = {grid[4].box: Image.new("RGB", (96 * 2, 96 * 2))}
    darkened = np.asarray(apply_tiled(image, doubled, tile=96, overlap=17, scale=2, done=black), dtype=np.int16)
    left, top, right, bottom = grid[4].box
    middle = np.s_[(top + bottom) - 8 : (top + bottom) + 8, (left + right) - 8 : (left + right) + 8]
    assert darkened[middle].mean() < np.asarray(whole, dtype=np.int16)[middle].mean()
    # A whole image in one tile is taken from `done` too.
    small = photo(60, 50)
    assert apply_tiled(small, pytest.fail, tile=64, overlap=16, done={(0, 0, 60, 50): small}) is not None


def test_a_computed_tile_of_the_wrong_size_is_refused() -> None:
    image = photo(300, 200)
    box = tile_grid(300, 200, 128, 32)[0].box
    with pytest.raises(ValueError, match="expected 128x128"):
        apply_tiled(image, lambda piece: piece, tile=128, overlap=32, done={box: Image.new("RGB", (64, 64))})
