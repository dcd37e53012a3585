"""Post FX: shapes, determinism, static and flickering grain, what each effect does, presets and bad input."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from likeness.inputs import InvalidInput
from likeness.media.post_fx import (
    EFFECT_NAMES,
    PRESETS,
    Bloom,
    ChromaticAberration,
    FilmGrain,
    PostFx,
    Sharpen,
    UnknownPostFx,
    apply_post_fx,
    apply_post_fx_to_frames,
    post_fx_from_dicts,
    post_fx_preset,
)


def scene(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth gradient with a bright disc and some texture: every effect has something to act on."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 0.2 + 0.5 * columns[..., None] / width * np.array([1.0, 0.8, 0.6], dtype=np.float32)
    disc = (rows - height / 2) ** 2 + (columns - width / 2) ** 2 < (min(height, width) / 6) ** 2
    base[disc] = 1.0
    texture = np.random.default_rng(seed).uniform(-0.05, 0.05, (height, width, 1)).astype(np.float32)
    return np.clip(np.rint((base + texture) * 255), 0, 255).astype(np.uint8)


def grey(height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), 128, dtype=np.uint8)


def laplacian_variance(image: np.ndarray) -> float:
    """How much edge contrast an image has: the variance of its (4-neighbour) Laplacian, on the green channel."""
    g = image[..., 1].astype(np.float64)
    return float(np.var(g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]))


def edge_position(row: np.ndarray) -> float:
    """Where a dark-to-bright step along `row` crosses half way, to a fraction of a pixel."""
    values = row.astype(np.float64)
    index = int(np.argmax(values >= 127.5))
    before, after = values[index - 1], values[index]
    return index - 1 + (127.5 - before) / (after - before)


SEED_LOOK = post_fx_preset("seed-look")
ONE_OF_EACH = [
    ChromaticAberration(shift=2.0),
    Sharpen(radius=1.0, amount=1.0),
    Bloom(threshold=0.7, radius=4.0, strength=0.5),
    FilmGrain(strength=0.05),
]


@pytest.mark.parametrize("shape", [(48, 64, 3), (37, 53, 3), (1, 1, 3), (5, 200, 3)])
def test_shape_and_dtype_are_kept(shape: tuple[int, int, int]) -> None:
    frame = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = apply_post_fx(frame, SEED_LOOK)
    assert out.shape == shape and out.dtype == np.uint8
    assert np.array_equal(frame, np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8))  # input untouched


@pytest.mark.parametrize(
    "frame", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)]
)
def test_frames_other_than_hxwx3_uint8_are_refused(frame: np.ndarray) -> None:
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        apply_post_fx(frame, SEED_LOOK)


def test_same_seed_same_bytes_other_seed_other_grain() -> None:
    frame = scene()
    first, again = apply_post_fx(frame, SEED_LOOK), apply_post_fx(frame.copy(), SEED_LOOK)
    assert first.tobytes() == again.tobytes()
    other = apply_post_fx(frame, SEED_LOOK.model_copy(update={"seed": 1}))
    assert not np.array_equal(first, other)


def test_streamed_frames_match_frames_done_one_by_one() -> None:
    frames = [scene(seed=index) for index in range(3)]
    for fx in (SEED_LOOK, PostFx(effects=(FilmGrain(strength=0.05, flicker=True),), seed=3)):
        streamed = list(apply_post_fx_to_frames(iter(frames), fx))
        one_by_one = [apply_post_fx(frame, fx, frame_index=index) for index, frame in enumerate(frames)]
        assert all(np.array_equal(a, b) for a, b in zip(streamed, one_by_one, strict=True))


def test_frames_are_streamed_one_at_a_time() -> None:
    pulled = []

    def frames() -> Iterator[np.ndarray]:
        for index in range(1000):
            pulled.append(index)
            yield scene(16, 16)

    outputs = apply_post_fx_to_frames(frames(), SEED_LOOK)
    next(outputs), next(outputs)
    assert pulled == [0, 1]


def grain_residuals(grain: FilmGrain, frames: list[np.ndarray]) -> list[np.ndarray]:
    """Per frame, the output with grain less the output without it."""
    with_grain = PostFx(effects=(Sharpen(amount=0.5), grain), seed=5)
    without = PostFx(effects=(Sharpen(amount=0.5),), seed=5)
    return [
        a.astype(np.int16) - b.astype(np.int16)
        for a, b in zip(
            apply_post_fx_to_frames(frames, with_grain), apply_post_fx_to_frames(frames, without), strict=True
        )
    ]


def test_grain_does_not_flicker_on_a_static_video() -> None:
    frames = [scene()] * 4
    residuals = grain_residuals(FilmGrain(strength=0.05), frames)
    assert np.abs(residuals[0]).mean() > 1  # there is grain
    assert all(np.array_equal(residuals[0], residual) for residual in residuals[1:])


def test_grain_flickers_when_asked_to() -> None:
    frames = [scene()] * 3
    residuals = grain_residuals(FilmGrain(strength=0.05, flicker=True), frames)
    assert not np.array_equal(residuals[0], residuals[1])
    assert not np.array_equal(residuals[1], residuals[2])


def test_grain_has_the_asked_strength_size_and_colour() -> None:
    def residual(grain: FilmGrain) -> np.ndarray:
        return apply_post_fx(grey(128, 128), PostFx(effects=(grain,))).astype(np.float64) - 128

    fine, coarse = residual(FilmGrain(strength=0.05, size=1)), residual(FilmGrain(strength=0.05, size=4))
    for noise in (fine, coarse):
        assert noise.std() == pytest.approx(0.05 * 255, rel=0.15)
    # Neighbouring pixels agree more when the grains are bigger.
    assert np.corrcoef(coarse[:, :-1, 1].ravel(), coarse[:, 1:, 1].ravel())[0, 1] > 0.7
    assert abs(np.corrcoef(fine[:, :-1, 1].ravel(), fine[:, 1:, 1].ravel())[0, 1]) < 0.2
    assert np.array_equal(fine[..., 0], fine[..., 2])  # monochrome by default
    colour = residual(FilmGrain(strength=0.05, monochrome=False))
    assert not np.array_equal(colour[..., 0], colour[..., 2])


def test_grain_spares_pure_black_and_white() -> None:
    frame = np.concatenate([np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)], axis=1)
    assert np.array_equal(apply_post_fx(frame, PostFx(effects=(FilmGrain(strength=0.2),))), frame)


@pytest.mark.parametrize("effect", ONE_OF_EACH, ids=lambda effect: effect.name)
def test_each_effect_changes_the_image(effect: ChromaticAberration | Sharpen | Bloom | FilmGrain) -> None:
    frame = scene()
    out = apply_post_fx(frame, PostFx(effects=(effect,)))
    assert np.abs(out.astype(np.int16) - frame).mean() > 0.3


@pytest.mark.parametrize(
    "effect",
    [
        ChromaticAberration(shift=0),
        ChromaticAberration(shift=3, strength=0),
        Sharpen(amount=0),
        Bloom(strength=0),
        FilmGrain(strength=0),
        FilmGrain(strength=0, flicker=True),
    ],
    ids=lambda effect: f"{effect.name}-off",
)
def test_an_effect_at_zero_gives_the_input_back(effect: ChromaticAberration | Sharpen | Bloom | FilmGrain) -> None:
    frame = np.random.default_rng(2).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    assert np.array_equal(apply_post_fx(frame, PostFx(effects=(effect,), seed=9), frame_index=4), frame)


def test_the_none_preset_gives_every_frame_back() -> None:
    frames = [np.random.default_rng(index).integers(0, 256, (20, 30, 3), dtype=np.uint8) for index in range(3)]
    outputs = apply_post_fx_to_frames(frames, PRESETS["none"])
    assert all(np.array_equal(a, b) for a, b in zip(outputs, frames, strict=True))


def vertical_edge(height: int = 64, width: int = 128, at: int = 96) -> np.ndarray:
    """Black left of column `at`, white from it on: an edge right of the centre."""
    frame = np.zeros((height, width, 3), np.uint8)
    frame[:, at:] = 255
    return frame


@pytest.mark.parametrize("mode", ["radial", "lateral"])
def test_chromatic_aberration_moves_red_and_blue_edges_opposite_ways(mode: str) -> None:
    frame = vertical_edge()
    out = apply_post_fx(frame, PostFx(effects=(ChromaticAberration(shift=4.0, mode=mode),)))
    row = frame.shape[0] // 2
    red, green, blue = (edge_position(out[row, :, channel]) for channel in range(3))
    assert green == pytest.approx(edge_position(frame[row, :, 1]))
    # Right of centre, outward (radial) and rightward (lateral) are both to the right.
    assert red > green + 0.5
    assert blue < green - 0.5
    assert red - green == pytest.approx(green - blue, rel=0.1)


def test_radial_aberration_is_none_at_the_centre_and_grows_outward() -> None:
    width = 129
    shifts = []
    for at in (64, 96, 120):
        frame = vertical_edge(height=65, width=width, at=at)
        out = apply_post_fx(frame, PostFx(effects=(ChromaticAberration(shift=6.0),)))
        shifts.append(edge_position(out[32, :, 0]) - edge_position(out[32, :, 1]))
    assert abs(shifts[0]) < 0.6
    assert shifts[0] < shifts[1] < shifts[2]


def test_sharpen_increases_edge_contrast() -> None:
    frame = scene()
    before = laplacian_variance(frame)
    light = laplacian_variance(apply_post_fx(frame, PostFx(effects=(Sharpen(amount=0.5),))))
    strong = laplacian_variance(apply_post_fx(frame, PostFx(effects=(Sharpen(amount=2.0),))))
    assert before < light < strong


def test_sharpen_threshold_leaves_small_detail_alone() -> None:
    frame = grey(32, 32)
    frame[::2, ::2] += 2  # a faint pattern, under 1% of full scale
    assert np.array_equal(apply_post_fx(frame, PostFx(effects=(Sharpen(amount=2.0, threshold=0.02),))), frame)
    assert not np.array_equal(apply_post_fx(frame, PostFx(effects=(Sharpen(amount=2.0),))), frame)


@pytest.mark.parametrize("radius", [1.5, 5.0, 12.0])
def test_bloom_brightens_around_a_bright_spot_and_not_far_away(radius: float) -> None:
    frame = np.full((200, 200, 3), 20, np.uint8)
    frame[90:110, 90:110] = 255
    out = apply_post_fx(frame, PostFx(effects=(Bloom(threshold=0.8, radius=radius, strength=0.8),)))
    near = np.s_[90:110, 110 : 110 + round(radius)]
    assert out[near].astype(int).mean() > frame[near].mean() + 10
    assert np.array_equal(out[90:110, 90:110], frame[90:110, 90:110])  # white stays white
    assert np.abs(out[:30, :30].astype(int) - frame[:30, :30]).max() <= 1  # a far dark corner


def test_bloom_leaves_an_image_without_highlights_alone() -> None:
    frame = (scene().astype(np.float32) * 0.7).astype(np.uint8)  # nothing above 0.8 of full scale
    assert np.array_equal(apply_post_fx(frame, PostFx(effects=(Bloom(threshold=0.8),))), frame)


def test_the_seed_look_has_all_four_effects_in_order() -> None:
    assert tuple(effect.name for effect in SEED_LOOK.effects) == EFFECT_NAMES
    grain = SEED_LOOK.effects[-1]
    assert isinstance(grain, FilmGrain) and not grain.flicker


def test_unknown_preset_names_itself_and_the_known_ones() -> None:
    with pytest.raises(UnknownPostFx) as caught:
        post_fx_preset("noir")
    assert isinstance(caught.value, InvalidInput)
    assert "'noir'" in str(caught.value)
    assert "none" in str(caught.value) and "seed-look" in str(caught.value)


def test_effects_from_dicts() -> None:
    fx = post_fx_from_dicts([{"name": "sharpen", "amount": 1.5}, {"name": "film_grain", "flicker": True}], seed=4)
    assert fx == PostFx(effects=(Sharpen(amount=1.5), FilmGrain(flicker=True)), seed=4)
    assert post_fx_from_dicts([]) == PRESETS["none"]


def test_unknown_effect_names_itself_and_the_known_ones() -> None:
    with pytest.raises(UnknownPostFx) as caught:
        post_fx_from_dicts([{"name": "bloom"}, {"name": "vignette", "strength": 0.3}])
    message = str(caught.value)
    assert "'vignette'" in message
    assert all(name in message for name in EFFECT_NAMES)
    with pytest.raises(UnknownPostFx, match="needs a name"):
        post_fx_from_dicts([{"amount": 1.0}])


@pytest.mark.parametrize(
    "make",
    [
        lambda: Sharpen(amount=-1),
        lambda: Sharpen(radius=0),
        lambda: FilmGrain(strength=2),
        lambda: FilmGrain(size=0.5),
        lambda: Bloom(threshold=1.0),
        lambda: ChromaticAberration(shift=float("nan")),
        lambda: ChromaticAberration(mode="diagonal"),
        lambda: Sharpen(amout=1.0),
        lambda: PostFx(seed=-1),
        lambda: post_fx_from_dicts([{"name": "bloom", "radius": -3}]),
    ],
)
def test_out_of_range_parameters_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValidationError):
        make()


def test_effects_and_chains_are_frozen() -> None:
    with pytest.raises(ValidationError):
        SEED_LOOK.effects[1].amount = 3.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        SEED_LOOK.seed = 2  # type: ignore[misc]
