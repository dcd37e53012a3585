"""Film-like post FX for rendered images and every frame of a video: chromatic aberration, sharpening, bloom
and film grain, each with bounded parameters, and the same bytes for the same input and seed.

A `PostFx` is an ordered chain of effects and the seed the grain is drawn from. Frames are HxWx3 uint8 in and
uint8 out; between, the math is float32 in [0, 1], clipped and rounded once at the end, so an effect at
strength 0 gives its input back exactly. Grain is one pattern for the whole video unless an effect asks to
`flicker`: on generated video, grain drawn anew each frame reads as noise boiling, not as film.

    from likeness.media.post_fx import apply_post_fx, apply_post_fx_to_frames, post_fx_preset
    look = post_fx_preset("seed-look").model_copy(update={"seed": 7})
    still = apply_post_fx(np.asarray(image.convert("RGB")), look)
    video = np.stack(list(apply_post_fx_to_frames(frames, look)))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from likeness.inputs import InvalidInput


class UnknownPostFx(InvalidInput):
    """A post FX preset or effect name that Likeness does not know."""


class _Effect(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ChromaticAberration(_Effect):
    """Red and blue drawn apart, as by a lens that does not focus all colours alike. `radial` moves red outward
    and blue inward, by `shift` px at the corners and none at the centre; `lateral` moves red right and blue
    left by `shift` px everywhere. `strength` is how much of the moved channels replaces the originals."""

    name: Literal["chromatic_aberration"] = "chromatic_aberration"
    shift: float = Field(default=1.5, ge=0, le=32)
    mode: Literal["radial", "lateral"] = "radial"
    strength: float = Field(default=1.0, ge=0, le=1)


class Sharpen(_Effect):
    """Unsharp mask: the image plus `amount` times its detail (itself less a Gaussian blur of `radius` px);
    detail smaller than `threshold` (a fraction of full scale) is left alone, so flat areas stay flat."""

    name: Literal["sharpen"] = "sharpen"
    radius: float = Field(default=1.0, gt=0, le=16)
    amount: float = Field(default=0.5, ge=0, le=5)
    threshold: float = Field(default=0.0, ge=0, le=1)


class Bloom(_Effect):
    """Glow around highlights: light above `threshold` is blurred by `radius` px and screened back over the
    image at `strength`."""

    name: Literal["bloom"] = "bloom"
    threshold: float = Field(default=0.8, ge=0, lt=1)
    radius: float = Field(default=12.0, gt=0, le=256)
    strength: float = Field(default=0.25, ge=0, le=1)


class FilmGrain(_Effect):
    """Gaussian grain of standard deviation `strength` (a fraction of full scale), grains about `size` px
    across, strongest in the midtones; one pattern for every frame unless `flicker`; one for all three
    channels if `monochrome`, else one per channel."""

    name: Literal["film_grain"] = "film_grain"
    strength: float = Field(default=0.03, ge=0, le=0.5)
    size: float = Field(default=1.0, ge=1, le=16)
    flicker: bool = False
    monochrome: bool = True


Effect = Annotated[ChromaticAberration | Sharpen | Bloom | FilmGrain, Field(discriminator="name")]
EFFECT_NAMES = tuple(effect.model_fields["name"].default for effect in (ChromaticAberration, Sharpen, Bloom, FilmGrain))


class PostFx(BaseModel):
    """Effects applied in order, and the seed their grain is drawn from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    effects: tuple[Effect, ...] = ()
    seed: int = Field(default=0, ge=0)


PRESETS: dict[str, PostFx] = {
    "none": PostFx(),
    # The seed workflow's look: barely-there fringes, a crisper edge, a soft glow on highlights, fine static
    # grain. Grain comes last so it is neither sharpened nor bloomed.
    "seed-look": PostFx(
        effects=(
            ChromaticAberration(shift=1.5, mode="radial", strength=1.0),
            Sharpen(radius=1.0, amount=0.35, threshold=0.01),
            Bloom(threshold=0.8, radius=12.0, strength=0.25),
            FilmGrain(strength=0.03, size=1.5, flicker=False, monochrome=True),
        )
    ),
}


def post_fx_preset(name: str) -> PostFx:
    """The preset called `name`; `UnknownPostFx` names the known ones."""
    if name not in PRESETS:
        raise UnknownPostFx(f"unknown post FX preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]


def post_fx_from_dicts(effects: Iterable[Mapping[str, Any]], seed: int = 0) -> PostFx:
    """A `PostFx` from effects as plain mappings (e.g. read from YAML), each with its `name`."""
    effects = list(effects)
    known = ", ".join(EFFECT_NAMES)
    for effect in effects:
        # Checked here because pydantic's error for a bad discriminator does not list the known names.
        if isinstance(effect, Mapping) and "name" not in effect:
            raise UnknownPostFx(f"a post FX effect needs a name, one of {known}; got {dict(effect)}")
        if isinstance(effect, Mapping) and effect["name"] not in EFFECT_NAMES:
            raise UnknownPostFx(f"unknown post FX effect {effect['name']!r}; known effects: {known}")
    return PostFx.model_validate({"effects": effects, "seed": seed})


def apply_post_fx(frame: np.ndarray, fx: PostFx, frame_index: int = 0) -> np.ndarray:
    """`fx` applied to one HxWx3 uint8 frame, the `frame_index`-th of its video; a new uint8 frame."""
    return _apply(frame, fx, frame_index, {})


def apply_post_fx_to_frames(frames: Iterable[np.ndarray], fx: PostFx) -> Iterator[np.ndarray]:
    """`fx` applied to each HxWx3 uint8 frame of a video in turn, one frame in memory at a time."""
    grains: dict[tuple[int, tuple[int, int]], np.ndarray] = {}
    for index, frame in enumerate(frames):
        yield _apply(frame, fx, index, grains)


def _apply(
    frame: np.ndarray, fx: PostFx, frame_index: int, grains: dict[tuple[int, tuple[int, int]], np.ndarray]
) -> np.ndarray:
    """`fx` on one frame; `grains` keeps the static grain fields of a video, drawn at its first frame."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"post FX takes HxWx3 uint8 frames; got {frame.dtype} of shape {frame.shape}")
    image = frame.astype(np.float32)
    image /= 255
    for position, effect in enumerate(fx.effects):
        match effect:
            case ChromaticAberration():
                image = _chromatic_aberration(image, effect)
            case Sharpen():
                image = _sharpen(image, effect)
            case Bloom():
                image = _bloom(image, effect)
            case FilmGrain() if effect.strength > 0:
                grain = _grain_field(effect, fx.seed, position, frame_index, grains, image.shape[:2])
                image = _film_grain(image, effect, grain)
    image *= 255
    return np.clip(np.rint(image, out=image), 0, 255, out=image).astype(np.uint8)


def _chromatic_aberration(image: np.ndarray, effect: ChromaticAberration) -> np.ndarray:
    """Red moved one way and blue the other, mixed over the originals at the effect's strength."""
    if effect.shift == 0 or effect.strength == 0:
        return image
    out = image.copy()
    for channel, sign in ((0, 1), (2, -1)):
        original = np.ascontiguousarray(image[..., channel])
        moved = _displaced(original, effect, sign)
        out[..., channel] = original + np.float32(effect.strength) * (moved - original)
    return out


def _displaced(channel: np.ndarray, effect: ChromaticAberration, sign: int) -> np.ndarray:
    """`channel` with its content moved by the aberration's shift: outward (radial) or right (lateral) for
    `sign` 1, the other way for -1."""
    height, width = channel.shape
    rows, columns = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    if effect.mode == "lateral":
        return _resampled(channel, columns - np.float32(sign * effect.shift), axis=1)
    centre_row, centre_column = (height - 1) / 2, (width - 1) / 2
    # Sampling nearer the centre magnifies: what sits `shift` px inside the corner lands on the corner.
    scale = np.float32(1 - sign * effect.shift / max(math.hypot(centre_row, centre_column), 1.0))
    channel = _resampled(channel, centre_row + (rows - centre_row) * scale, axis=0)
    return _resampled(channel, centre_column + (columns - centre_column) * scale, axis=1)


def _resampled(image: np.ndarray, coordinates: np.ndarray, axis: int) -> np.ndarray:
    """`image` sampled linearly at fractional `coordinates` along `axis`; past an edge, the edge pixel."""
    size = image.shape[axis]
    coordinates = np.clip(coordinates, 0, size - 1)
    low = np.floor(coordinates).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    weight = (coordinates - low).astype(np.float32).reshape([-1 if d == axis else 1 for d in range(image.ndim)])
    below, above = np.take(image, low, axis=axis), np.take(image, high, axis=axis)
    above -= below
    above *= weight
    above += below
    return above


def _sharpen(image: np.ndarray, effect: Sharpen) -> np.ndarray:
    """Unsharp mask."""
    if effect.amount == 0:
        return image
    detail = image - _gaussian_blur(image, effect.radius)
    detail[np.abs(detail) < effect.threshold] = 0
    return image + np.float32(effect.amount) * detail


def _bloom(image: np.ndarray, effect: Bloom) -> np.ndarray:
    """Highlights above the threshold, blurred, screened over the image."""
    if effect.strength == 0:
        return image
    # Rescaled so that full white glows at full strength whatever the threshold.
    bright = np.maximum(image - np.float32(effect.threshold), 0) / np.float32(1 - effect.threshold)
    glow = np.clip(np.float32(effect.strength) * _gaussian_blur(bright, effect.radius), 0, 1)
    # Screen, not add: a glow brightens dark pixels most and never pushes a highlight past white.
    return image + glow * (1 - image)


def _film_grain(image: np.ndarray, effect: FilmGrain, grain: np.ndarray) -> np.ndarray:
    """`grain` (unit standard deviation) added at the effect's strength, weighted to the midtones."""
    luma = image @ np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
    # Fading to none at black and white, so grain neither lifts the blacks nor greys the highlights.
    response = np.clip(4 * luma * (1 - luma), 0, 1)[..., None]
    return image + np.float32(effect.strength) * response * grain


def _grain_field(
    effect: FilmGrain,
    seed: int,
    position: int,
    frame_index: int,
    grains: dict[tuple[int, tuple[int, int]], np.ndarray],
    shape: tuple[int, int],
) -> np.ndarray:
    """The grain of the effect at `position` for this frame: from (seed, position) and kept in `grains`, or with
    `flicker` from (seed, position, frame_index) and drawn anew."""
    if effect.flicker:
        return _drawn_grain(effect, (seed, position, frame_index), shape)
    if (position, shape) not in grains:
        grains[position, shape] = _drawn_grain(effect, (seed, position), shape)
    return grains[position, shape]


def _drawn_grain(effect: FilmGrain, key: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    """HxWx1 (monochrome) or HxWx3 Gaussian noise of unit standard deviation, in grains of the effect's size."""
    height, width = shape
    rng = np.random.default_rng(key)
    channels = 1 if effect.monochrome else 3
    small = (math.ceil(height / effect.size), math.ceil(width / effect.size))
    noise = rng.standard_normal((channels, *small), dtype=np.float32)
    if effect.size > 1:
        # Bicubic upsampling of coarser noise makes grains of the size; it also damps the noise, hence the
        # rescale to unit deviation.
        noise = np.stack(
            [np.asarray(Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)) for field in noise]
        )
        noise /= max(float(noise.std()), 1e-6)
    return np.moveaxis(noise, 0, -1)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` (HxWxC) blurred by a Gaussian of `sigma` px, edges extended. A wide blur is done on an image
    `factor` times smaller, at a fraction of the cost and within a few percent of the same blur."""
    factor = max(1, math.floor(sigma))
    if factor == 1:
        return _blurred(image, sigma)
    height, width = image.shape[:2]
    padded = image
    if height % factor or width % factor:
        padded = np.pad(image, [(0, -height % factor), (0, -width % factor), (0, 0)], mode="edge")
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, -1)
    small = blocks.mean(axis=(1, 3), dtype=np.float32)
    # Less the blur that averaging the blocks and interpolating back add: about 1/4 small pixel squared.
    small = _blurred(small, math.sqrt((sigma / factor) ** 2 - 0.25))
    # Each small pixel's value belongs at the centre of the block it averages.
    rows = (np.arange(height, dtype=np.float32) - (factor - 1) / 2) / factor
    columns = (np.arange(width, dtype=np.float32) - (factor - 1) / 2) / factor
    # Columns first, while there are few rows.
    return _resampled(_resampled(small, columns, axis=1), rows, axis=0)


def _blurred(image: np.ndarray, sigma: float) -> np.ndarray:
    """`image` blurred by a Gaussian of `sigma` px (at most a few), its kernel cut at 3 sigma."""
    radius = math.ceil(3 * sigma)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / np.float32(sigma)) ** 2)
    kernel = taps / taps.sum()
    return _convolved(_convolved(image, kernel, axis=0), kernel, axis=1)


def _convolved(image: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """`image` convolved along `axis` with an odd, symmetric `kernel`, edges extended."""
    radius, size = len(kernel) // 2, image.shape[axis]
    widths = [(radius, radius) if dimension == axis else (0, 0) for dimension in range(image.ndim)]
    padded = np.pad(image, widths, mode="edge")

    def shifted(offset: int) -> np.ndarray:
        return padded[tuple(slice(offset, offset + size) if d == axis else slice(None) for d in range(image.ndim))]

    # The kernel is symmetric: one multiply per pair of taps, and in place, since a 4K frame is 100 MB.
    out = shifted(radius) * kernel[radius]
    pair = np.empty_like(out)
    for offset in range(1, radius + 1):
        np.add(shifted(radius + offset), shifted(radius - offset), out=pair)
        pair *= kernel[radius + offset]
        out += pair
    return out
