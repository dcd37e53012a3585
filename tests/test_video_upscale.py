"""The chunked, tiled video upscale: an H.264 yuv420p MP4 of the right size and length, the same pictures as
the whole-frame upscale within a tolerance, a lower peak of traced memory, and refusals that leave no file."""

from __future__ import annotations

import re
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from likeness.inputs import InvalidInput
from likeness.media.imaging import decode_mp4
from likeness.media.video_upscale import (
    MB,
    VideoMemoryBoundTooSmall,
    VideoUpscaleConfig,
    estimate_peak_bytes,
    plan_upscale,
    read_frames,
    upscale_video,
    video_fps,
    video_target_size,
)

FRAMES, WIDTH, HEIGHT, FPS, SCALE = 24, 64, 48, 8, 4
TARGET = (256, 192)
# What esrgan_upscale holds in numpy per output pixel (its float32 output times 255, then rounded): what
# tracemalloc sees. Torch's own tensors are not traced, so the estimates below count only the traced part.
TRACED_TILE_BYTES = 32
WHOLE = VideoUpscaleConfig(
    long_side=256, chunk_frames=FRAMES, tile=64, overlap=8, max_memory_mb=64, tile_bytes_per_pixel=TRACED_TILE_BYTES
)
# 4 tiles of 40 px per frame; the bound admits 4 of the 24 frames asked for per chunk.
CHUNK_BOUND_MB = estimate_peak_bytes((WIDTH, HEIGHT), TARGET, SCALE, 4, 40, 8, TRACED_TILE_BYTES) / MB
CHUNKED = WHOLE.model_copy(update={"tile": 40, "max_memory_mb": CHUNK_BOUND_MB})


def moving_gradient(count: int = FRAMES, width: int = WIDTH, height: int = HEIGHT) -> Iterator[np.ndarray]:
    """Frames of diagonal colour gradients that drift a few pixels a frame, made one at a time."""
    y, x = np.mgrid[0:height, 0:width]
    for t in range(count):
        channels = ((x * 4 + t * 5) % 256, (y * 5 + t * 3) % 256, ((x + y) * 2 + t * 7) % 256)
        yield np.stack(channels, axis=-1).astype(np.uint8)


def resize_4x(tile: Image.Image) -> Image.Image:
    return tile.resize((tile.width * SCALE, tile.height * SCALE), Image.Resampling.BICUBIC)


def probe(path: Path) -> tuple[str, str, tuple[int, int]]:
    """(codec, pixel format, size) of the first video stream, from `ffmpeg -i` (imageio-ffmpeg has no ffprobe)."""
    import imageio_ffmpeg

    stderr = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True
    ).stderr
    match = re.search(r"Video: (\w+)[^,]*, (\w+)(?:\([^)]*\))?, (\d+)x(\d+)", stderr)
    assert match, stderr
    return match[1], match[2], (int(match[3]), int(match[4]))


def traced(call: Callable[..., dict], *args: Any) -> tuple[dict, int]:
    """`call(*args)` and the peak of memory tracemalloc saw during it, in bytes."""
    tracemalloc.start()
    try:
        result = call(*args)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def esrgan(models_dir: Path) -> Callable[[Image.Image], Image.Image]:
    """The tiny profile's upscaler role (a random-weight spandrel ESRGAN 4x) as a tile function."""
    from likeness import settings
    from likeness.models import pipelines
    from likeness.models.profiles import load_profile
    from tasks.upscale import esrgan_upscale

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIKENESS_MODELS_DIR", str(models_dir))
        settings.get_settings.cache_clear()
        try:
            model = pipelines.get_pipeline("upscaler", load_profile("tiny"))
        finally:
            settings.get_settings.cache_clear()
            pipelines.load_counts.clear()
    assert model.scale == SCALE

    def upscale(tile: Image.Image) -> Image.Image:
        return esrgan_upscale(model, tile)

    upscale(Image.new("RGB", (8, 8)))  # torch's first call allocates once; keep it out of the measurements
    return upscale


@pytest.fixture(scope="module")
def runs(esrgan, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict, int]]:
    """The whole-frame and the chunked, tiled upscale of the same video: (MP4, figures, traced peak) each."""
    folder = tmp_path_factory.mktemp("video-upscale")
    results = {}
    for name, config in (("whole", WHOLE), ("chunked", CHUNKED)):
        path = folder / f"{name}.mp4"
        figures, peak = traced(upscale_video, moving_gradient(), FPS, esrgan, SCALE, config, path)
        results[name] = path, figures, peak
    return results


def test_the_output_is_h264_yuv420p_at_the_target_size(runs):
    path, figures, _ = runs["chunked"]
    assert probe(path) == ("h264", "yuv420p", TARGET)
    assert decode_mp4(path).shape == (FRAMES, TARGET[1], TARGET[0], 3)
    assert video_fps(path) == FPS
    assert figures["frames"] == FRAMES and figures["size"] == TARGET
    # The bound, not chunk_frames (24), set the chunk.
    assert (figures["chunk_frames"], figures["chunks"], figures["tile"], figures["tiles_per_frame"]) == (4, 6, 40, 4)
    assert runs["whole"][1]["chunks"] == 1 and runs["whole"][1]["tiles_per_frame"] == 1
    # Nothing but the two MP4s: the temporary files were renamed.
    assert sorted(p.name for p in path.parent.iterdir()) == ["chunked.mp4", "whole.mp4"]


def test_chunked_and_tiled_equals_whole_within_a_tolerance(runs):
    whole = np.stack(list(read_frames(runs["whole"][0]))).astype(np.int16)
    chunked = np.stack(list(read_frames(runs["chunked"][0]))).astype(np.int16)
    assert whole.shape == chunked.shape == (FRAMES, TARGET[1], TARGET[0], 3)
    # The random ESRGAN makes a picture, not a flat field, and it moves: the comparison means something.
    assert whole.std() > 5 and np.abs(np.diff(whole, axis=0)).mean() > 0.1
    assert np.abs(whole - chunked).mean() < 2


def test_the_chunked_peak_is_lower_and_within_its_bound(runs):
    _, whole, whole_peak = runs["whole"]
    _, chunked, chunked_peak = runs["chunked"]
    print(f"traced peak: whole {whole_peak / MB:.2f} MB, chunked {chunked_peak / MB:.2f} MB")
    assert chunked_peak < 0.8 * whole_peak
    assert chunked_peak <= chunked["estimated_peak_bytes"] <= CHUNKED.max_memory_mb * MB
    assert whole_peak <= whole["estimated_peak_bytes"]


def test_the_target_keeps_the_aspect_with_even_sides():
    assert video_target_size(1920, 1080, 3840) == (3840, 2160)
    assert video_target_size(WIDTH, HEIGHT, 256) == TARGET
    assert video_target_size(100, 75, 250) == (250, 188)
    assert video_target_size(90, 160, 3840) == (2160, 3840)
    with pytest.raises(ValueError, match="even"):
        VideoUpscaleConfig(long_side=3841)
    with pytest.raises(ValueError, match="overlap"):
        VideoUpscaleConfig(tile=32, overlap=32)


def test_the_plan_shrinks_the_chunk_then_the_tile_to_fit_the_bound():
    source, target = (960, 540), (3840, 2160)
    config = VideoUpscaleConfig(chunk_frames=16, tile=256, overlap=16, max_memory_mb=64 * 1024)

    def bound(chunk: int, tile: int) -> float:
        return estimate_peak_bytes(source, target, SCALE, chunk, tile, 16, config.tile_bytes_per_pixel) / MB

    for chunk, tile in ((16, 256), (5, 256), (1, 128), (1, 48)):
        plan = plan_upscale(source, SCALE, config.model_copy(update={"max_memory_mb": bound(chunk, tile)}))
        assert (plan.target, plan.chunk_frames, plan.tile) == (target, chunk, tile)
        assert plan.estimated_peak_bytes <= bound(chunk, tile) * MB
    # A 4K frame alone is 24 MB; with its blend buffers (316 MB) and a 48 px tile 384 MB.
    with pytest.raises(VideoMemoryBoundTooSmall, match="max_memory_mb is 380, .* needs about 384.3 MB"):
        plan_upscale(source, SCALE, config.model_copy(update={"max_memory_mb": 380}))


def test_a_bound_too_small_for_one_frame_is_refused_before_any_frame_is_upscaled(tmp_path):
    read, calls = [], []

    def frames() -> Iterator[np.ndarray]:
        for frame in moving_gradient():
            read.append(frame)
            yield frame

    def tile_function(tile: Image.Image) -> Image.Image:
        calls.append(tile.size)
        return resize_4x(tile)

    config = CHUNKED.model_copy(update={"max_memory_mb": 0.5})
    with pytest.raises(InvalidInput, match=r"needs about 3\.1 MB even in 32 px tiles") as refused:
        upscale_video(frames(), FPS, tile_function, SCALE, config, tmp_path / "out.mp4")
    assert isinstance(refused.value, VideoMemoryBoundTooSmall)
    assert len(read) == 1 and calls == []
    assert list(tmp_path.iterdir()) == []


def test_an_upscale_cut_off_midway_leaves_no_file(tmp_path):
    frames_seen = []

    def fails_on_frame_5(tile: Image.Image) -> Image.Image:
        # A whole frame is one tile under WHOLE's tile of 64 px.
        frames_seen.append(tile.size)
        if len(frames_seen) == 6:
            raise RuntimeError("out of memory on frame 5")
        return resize_4x(tile)

    config = WHOLE.model_copy(update={"chunk_frames": 2})
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="frame 5"):
        upscale_video(moving_gradient(), FPS, fails_on_frame_5, SCALE, config, out)
    # Frames 0-3 had gone to ffmpeg already: only the temporary file held them, and it is gone.
    assert list(tmp_path.iterdir()) == []

    def changes_size() -> Iterator[np.ndarray]:
        yield from moving_gradient(3)
        yield from moving_gradient(3, WIDTH, HEIGHT + 2)

    with pytest.raises(InvalidInput, match="frame 3 is 64x50, the first frame 64x48"):
        upscale_video(changes_size(), FPS, resize_4x, SCALE, config, out)
    assert list(tmp_path.iterdir()) == []


def test_a_finished_upscale_replaces_an_older_file(tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"an older render")
    figures = upscale_video(moving_gradient(3), FPS, resize_4x, SCALE, WHOLE, out)
    assert figures["frames"] == 3 and probe(out) == ("h264", "yuv420p", TARGET)
    assert list(tmp_path.iterdir()) == [out]


def test_no_row_or_column_of_the_tiled_upscale_shows_a_seam(esrgan, tmp_path):
    # A seam barely moves a whole frame's mean difference; it shows in the rows and columns where tiles meet. On
    # 80 px frames, 40 px tiles that did not overlap would meet at 40 px, and the random ESRGAN's edges differ.
    size = (80, 80)
    whole_config = WHOLE.model_copy(update={"long_side": 4 * size[0]})
    tiled_config = whole_config.model_copy(update={"tile": 40, "overlap": 8})
    frames = {}
    for name, config in (("whole", whole_config), ("tiled", tiled_config)):
        path = tmp_path / f"{name}.mp4"
        figures = upscale_video(moving_gradient(4, *size), FPS, esrgan, SCALE, config, path)
        frames[name] = np.stack(list(read_frames(path))).astype(np.int16)
    assert figures["tiles_per_frame"] > 1
    difference = np.abs(frames["whole"] - frames["tiled"])
    by_column, by_row = difference.mean(axis=(0, 1, 3)), difference.mean(axis=(0, 2, 3))
    print(f"largest mean difference: a column {by_column.max():.2f}, a row {by_row.max():.2f}")
    assert by_column.max() < 1.5, f"a seam at column {by_column.argmax()}: {by_column.max():.2f}"
    assert by_row.max() < 1.5, f"a seam at row {by_row.argmax()}: {by_row.max():.2f}"
