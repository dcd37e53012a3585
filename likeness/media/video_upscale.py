"""4K video upscale in bounded memory: frames in temporal chunks, each frame in overlapping spatial tiles.

A 4K frame does not go through ESRGAN whole on a small GPU (a 64-filter ESRGAN holds about 512 bytes per
output pixel, 4 GB for 3840x2160), and a clip's upscaled frames do not fit in memory together (81 frames at
4K are 2 GB of uint8). So frames are read lazily, `chunk_frames` at a time; each frame is upscaled tile by
tile with `apply_tiled` (the overlaps cross-fade, no seams), resized to the exact target with Lanczos when the
model's scale misses it, and streamed to an H.264 yuv420p MP4 through one ffmpeg process. `plan_upscale`
shrinks the chunk, then the tile, until the estimated peak fits `max_memory_mb`, and refuses a bound that not
even one frame fits. The MP4 is written under a temporary name and renamed when complete.

The model is a parameter (`likeness` does not import the stages): any function that upscales an RGB tile
`scale` times, e.g. the upscaler role's spandrel ESRGAN through `tasks.upscale.esrgan_upscale`.

    from pathlib import Path
    from likeness.media.video_upscale import VideoUpscaleConfig, read_frames, upscale_video, video_fps
    upscale = lambda tile: tile.resize((tile.width * 4, tile.height * 4))
    config = VideoUpscaleConfig(long_side=3840, chunk_frames=8, tile=256, overlap=16, max_memory_mb=2048)
    source = Path("in.mp4")
    figures = upscale_video(read_frames(source), video_fps(source), upscale, 4, config, Path("4k.mp4"))
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from likeness.base import Frozen
from likeness.inputs import InvalidInput
from likeness.media.tiling import apply_tiled, tile_grid
from likeness.stop import check_stop

MB = 2**20
# apply_tiled's float32 sum (12 B) and weights (4 B) per upscaled pixel, and at its end two float32 RGB
# temporaries of the blend (the division and the rounding) alive together: 40 B per upscaled pixel.
BLEND_BYTES_PER_PIXEL = 40
# apply_tiled's float32 copy of a tile's output (12 B), that copy times its weights (12 B), the weights (4 B).
TILE_BLEND_BYTES_PER_PIXEL = 28
# The tile is shrunk in these steps when the first tile does not fit the bound.
TILE_STEP = 16


class VideoMemoryBoundTooSmall(InvalidInput):
    """`max_memory_mb` is below what one frame needs at the target size with the smallest tile."""


class VideoUpscaleConfig(Frozen):
    """Target size, chunking and tiling of a video upscale, and the memory bound they must fit under.

    `tile` and `overlap` are in input pixels, as `apply_tiled` takes them. `tile_bytes_per_pixel` is what the
    tile function holds per output pixel of a tile (ESRGAN with 64 filters in float32: two 64-channel feature
    maps at the output size, 512 B; half that in half precision)."""

    long_side: int = Field(default=3840, gt=0)
    chunk_frames: int = Field(default=16, ge=1)
    tile: int = Field(default=256, gt=0)
    overlap: int = Field(default=16, ge=0)
    max_memory_mb: float = Field(default=4096, gt=0)
    tile_bytes_per_pixel: int = Field(default=512, ge=0)
    # x264's constant rate factor: 0 lossless, 51 worst; 16 is visually lossless, as encode_mp4 uses.
    crf: int = Field(default=16, ge=0, le=51)

    @model_validator(mode="after")
    def _valid_sizes(self) -> VideoUpscaleConfig:
        if self.long_side % 2:
            raise ValueError(f"long_side ({self.long_side}) must be even: yuv420p halves the chroma both ways")
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be below tile ({self.tile})")
        return self


@dataclass(frozen=True)
class UpscalePlan:
    """What `plan_upscale` settled on for one video: sizes, chunk, tile, and the peak it estimates."""

    source: tuple[int, int]
    target: tuple[int, int]
    scale: int
    chunk_frames: int
    tile: int
    overlap: int
    tiles_per_frame: int
    estimated_peak_bytes: int


def video_target_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The size with `long_side` on the longer side, the aspect ratio kept and both sides even (yuv420p)."""
    factor = long_side / max(width, height)
    return max(2, 2 * round(width * factor / 2)), max(2, 2 * round(height * factor / 2))


def estimate_peak_bytes(
    source: tuple[int, int],
    target: tuple[int, int],
    scale: int,
    chunk_frames: int,
    tile: int,
    overlap: int,
    tile_bytes_per_pixel: int,
) -> int:
    """Upper bound of the working memory of an upscale, in bytes (frames and buffers, not the model's weights):

    chunk_frames * 3 * (w*h + W*H)                       a chunk's input and output frames, uint8
    + 3 * w*h*s^2                                        one upscaled frame before its resize to W x H
    + 40 * w*h*s^2, if the frame takes several tiles     apply_tiled's blend buffers
    + (b + 28 if tiled else b) * tw*th*s^2               the largest tile: the tile function's b B per output
                                                         pixel, and apply_tiled's float32 copies of its output
    for a w x h source, a W x H target, model scale s and tiles of at most tw x th input pixels."""
    width, height = source
    upscaled = width * height * scale**2
    tiles = tile_grid(width, height, tile, overlap)
    largest = max(piece.width * piece.height for piece in tiles) * scale**2
    tiled = len(tiles) > 1
    frames = chunk_frames * 3 * (width * height + target[0] * target[1])
    blend = BLEND_BYTES_PER_PIXEL * upscaled if tiled else 0
    per_tile = tile_bytes_per_pixel + (TILE_BLEND_BYTES_PER_PIXEL if tiled else 0)
    return frames + 3 * upscaled + blend + per_tile * largest


def plan_upscale(source: tuple[int, int], scale: int, config: VideoUpscaleConfig) -> UpscalePlan:
    """The largest chunk (at most `config.chunk_frames`), then the largest tile (at most `config.tile`, in
    steps of 16 px above twice the overlap), whose estimated peak fits `config.max_memory_mb`.

    The chunk goes first: with a per-tile model call it changes nothing in the output, while a smaller tile
    means more tile edges and more calls. Raises VideoMemoryBoundTooSmall when one frame with the smallest
    tile does not fit."""
    if scale < 1:
        raise InvalidInput(f"the model's scale must be at least 1, not {scale}")
    target = video_target_size(*source, config.long_side)
    bound = int(config.max_memory_mb * MB)

    def estimate(chunk: int, tile: int) -> int:
        return estimate_peak_bytes(source, target, scale, chunk, tile, config.overlap, config.tile_bytes_per_pixel)

    below = config.tile - (config.tile % TILE_STEP or TILE_STEP)
    candidates = [config.tile, *range(below, 2 * config.overlap, -TILE_STEP)]
    needs = {tile: estimate(1, tile) for tile in candidates}
    tile = next((tile for tile, need in needs.items() if need <= bound), None)
    if tile is None:
        # A smaller tile is not always smaller in all: one just under the frame adds the blend buffers.
        least = min(needs, key=needs.__getitem__)
        raise VideoMemoryBoundTooSmall(
            f"max_memory_mb is {config.max_memory_mb:g}, but one {source[0]}x{source[1]} frame upscaled "
            f"{scale}x to {target[0]}x{target[1]} needs about {needs[least] / MB:.1f} MB even in "
            f"{least} px tiles; raise max_memory_mb, or lower long_side or tile_bytes_per_pixel"
        )
    per_frame = 3 * (source[0] * source[1] + target[0] * target[1])
    chunk = min(config.chunk_frames, 1 + (bound - needs[tile]) // per_frame)
    return UpscalePlan(
        source=source,
        target=target,
        scale=scale,
        chunk_frames=chunk,
        tile=tile,
        overlap=config.overlap,
        tiles_per_frame=len(tile_grid(*source, tile, config.overlap)),
        estimated_peak_bytes=estimate(chunk, tile),
    )


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video file, HxWx3 uint8, decoded one at a time by ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        width, height = next(reader)["size"]
        for data in reader:
            yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()


def video_fps(path: Path) -> float:
    """The frame rate of a video file, as ffmpeg reads it."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        return float(next(reader)["fps"])
    finally:
        reader.close()


def upscale_video(
    frames: Iterable[np.ndarray],
    fps: float,
    upscale_tile: Callable[[Image.Image], Image.Image],
    scale: int,
    config: VideoUpscaleConfig,
    out_path: Path,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Upscale HxWx3 uint8 `frames` with `upscale_tile` (RGB tile in, `scale` times larger out) to an H.264 MP4
    at `out_path` (its container tags `metadata`), holding at most one chunk of frames; returns the figures of the
    run and its plan.

    The memory bound is checked on the first frame, before any is upscaled; `out_path` appears only complete."""
    if fps <= 0:
        raise InvalidInput(f"fps must be positive, not {fps}")
    source = iter(frames)
    first = next(source, None)
    if first is None:
        raise InvalidInput("the video has no frames")
    size = _frame_size(first, 0, None)
    plan = plan_upscale(size, scale, config)
    out_path = Path(out_path)
    handle, name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".mp4")
    os.close(handle)
    partial = Path(name)
    writer = _mp4_writer(partial, plan.target, fps, config.crf, metadata or {})
    count = chunks = 0
    # One list reused for every chunk, each input replaced by its output: never more than a chunk of frames.
    chunk: list[np.ndarray] = []
    try:
        for index, frame in enumerate(itertools.chain([first], source)):
            _frame_size(frame, index, size)
            chunk.append(frame)
            if len(chunk) == plan.chunk_frames:
                _flush(chunk, writer, upscale_tile, plan)
                chunks += 1
            count = index + 1
        if chunk:
            _flush(chunk, writer, upscale_tile, plan)
            chunks += 1
        writer.close()
        os.replace(partial, out_path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return {
        "frames": count,
        "size": plan.target,
        "chunks": chunks,
        "chunk_frames": plan.chunk_frames,
        "tile": plan.tile,
        "tiles_per_frame": plan.tiles_per_frame,
        "estimated_peak_bytes": plan.estimated_peak_bytes,
    }


def _frame_size(frame: np.ndarray, index: int, expected: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height) of an HxWx3 uint8 frame, refused if it is not one or differs from `expected`."""
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        shape = getattr(frame, "shape", None)
        raise InvalidInput(f"frame {index} is not an HxWx3 uint8 array (shape {shape}, {type(frame).__name__})")
    size = frame.shape[1], frame.shape[0]
    if expected is not None and size != expected:
        raise InvalidInput(f"frame {index} is {size[0]}x{size[1]}, the first frame {expected[0]}x{expected[1]}")
    return size


def _mp4_writer(path: Path, size: tuple[int, int], fps: float, crf: int, metadata: dict[str, str]) -> Any:
    """A started imageio-ffmpeg generator that encodes the RGB frames sent to it into an H.264 yuv420p MP4."""
    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(path),
        size,
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        # The sizes are even already; ffmpeg's own padding to 16 would change the frame size.
        macro_block_size=1,
        quality=None,
        output_params=[
            "-crf",
            str(crf),
            *(arg for name, value in metadata.items() for arg in ("-metadata", f"{name}={value}")),
        ],
    )
    writer.send(None)
    return writer


def _flush(
    chunk: list[np.ndarray], writer: Any, upscale_tile: Callable[[Image.Image], Image.Image], plan: UpscalePlan
) -> None:
    """Upscale a chunk's frames in place, send them to the writer, and empty the chunk."""
    for position, frame in enumerate(chunk):
        check_stop()
        chunk[position] = _upscale_frame(frame, upscale_tile, plan)
    for frame in chunk:
        writer.send(frame)
    chunk.clear()


def _upscale_frame(
    frame: np.ndarray, upscale_tile: Callable[[Image.Image], Image.Image], plan: UpscalePlan
) -> np.ndarray:
    """One frame upscaled in tiles and resized to the target size."""
    upscaled = apply_tiled(Image.fromarray(frame), upscale_tile, plan.tile, plan.overlap, scale=plan.scale)
    if upscaled.size != plan.target:
        upscaled = upscaled.resize(plan.target, Image.Resampling.LANCZOS)
    return np.ascontiguousarray(upscaled)
