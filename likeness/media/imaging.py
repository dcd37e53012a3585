"""Image and video helpers shared by the stages: square crops, contact sheets, MP4 encoding."""

from __future__ import annotations

import math
import re
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize: the stages work on square frames."""
    return ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


def to_pil(frame: np.ndarray) -> Image.Image:
    """A float frame in [0, 1], HxWx3, as an 8-bit image."""
    return Image.fromarray((np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8))


SHEET_COLUMNS = 4
SHEET_LABEL_HEIGHT = 18


def contact_sheet_size(count: int, cell: int = 256) -> tuple[int, int]:
    """Width and height of the contact sheet of `count` images."""
    columns = min(count, SHEET_COLUMNS) or 1
    return columns * cell, math.ceil(count / columns) * (cell + SHEET_LABEL_HEIGHT)


def contact_sheet(
    images: Sequence[Image.Image], labels: Sequence[str], cell: int = 256, refused: Sequence[bool] | None = None
) -> Image.Image:
    """A grid of thumbnails with a label under each, for a person to judge a dataset at a glance; `refused`
    images get a red frame, and their label (the reasons) is also written across the thumbnail."""
    refused = refused or [False] * len(images)
    columns = min(len(images), SHEET_COLUMNS) or 1
    sheet = Image.new("RGB", contact_sheet_size(len(images), cell), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (image, label, is_refused) in enumerate(zip(images, labels, refused, strict=True)):
        x, y = (index % columns) * cell, (index // columns) * (cell + SHEET_LABEL_HEIGHT)
        sheet.paste(ImageOps.contain(image.convert("RGB"), (cell, cell)), (x, y))
        colour = "red" if is_refused else "black"
        draw.text((x + 4, y + cell + 3), label, fill=colour)
        if is_refused:
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="red", width=4)
            lines = textwrap.wrap(label, width=cell // 7)
            top = y + cell - 8 - 12 * len(lines)
            draw.rectangle((x + 4, top - 2, x + cell - 5, y + cell - 6), fill="white")
            for number, line in enumerate(lines):
                draw.text((x + 8, top + 12 * number), line, fill="red")
    return sheet


def encode_mp4(frames: np.ndarray, fps: int, metadata: dict[str, str] | None = None) -> bytes:
    """H.264 MP4 bytes of frames (T, H, W, 3: float in [0, 1], or uint8), through the ffmpeg imageio-ffmpeg
    ships; `metadata` become the container's tags (`title`, `comment`, ...), as `ffmpeg -i` shows them."""
    import imageio_ffmpeg

    uint8 = frames if frames.dtype == np.uint8 else (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    height, width = uint8.shape[1:3]
    tags = [argument for name, value in (metadata or {}).items() for argument in ("-metadata", f"{name}={value}")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,
            output_params=["-crf", "16", *tags],
        )
        writer.send(None)
        for frame in uint8:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def decode_mp4(path: Path) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of an MP4 file."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(frame, np.uint8).reshape(height, width, 3) for frame in reader]
    return np.stack(frames)


def sample_frames(path: Path, count: int, frames: int) -> list[np.ndarray]:
    """`count` frames spread evenly over an MP4 of `frames` frames (first and last included), read one at a time."""
    import imageio_ffmpeg

    count = min(count, frames)
    wanted = {round(i * (frames - 1) / max(count - 1, 1)) for i in range(count)}
    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    picked = []
    for index, frame in enumerate(reader):
        if index in wanted:
            picked.append(np.frombuffer(frame, np.uint8).reshape(height, width, 3).copy())
    return picked


def read_mp4_metadata(path: Path) -> dict[str, str]:
    """The container tags of an MP4 (`title`, `comment`, ...), whole: `ffmpeg -i` shows only their start."""
    import subprocess

    import imageio_ffmpeg

    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    tags: dict[str, str] = {}
    # ffmetadata escapes `=`, `;`, `#`, `\` and newlines with a backslash.
    for line in re.split(r"(?<!\\)\n", text)[1:]:
        name, sep, value = line.partition("=")
        if sep:
            tags[name] = re.sub(r"\\(.)", r"\1", value, flags=re.DOTALL)
    return tags
