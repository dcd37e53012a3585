"""Peak memory and wall time of the video upscale, chunked and tiled vs one chunk of whole frames.

    .venv/bin/python bench/video_upscale_memory.py [--frames 33] [--width 160] [--height 90] [--long-side 640]

Upscales a synthetic moving gradient with the tiny profile's upscaler (a random-weight spandrel ESRGAN 4x,
called as the upscale stage calls it) to an H.264 MP4, once with the chunk and tile given (default 8 frames,
64 px tiles overlapping by 8) and once as a single chunk of whole frames. Each mode runs in a child process
of its own: the peak RSS there (the high-water mark reset after the model loads) counts torch's tensors and
ffmpeg's pipe, which tracemalloc does not see; the traced peak (numpy's frames and buffers) is from a second
run under tracemalloc. Figures, not a test: machine load moves the times.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 2**20


def moving_gradient(count: int, width: int, height: int):
    """Frames of diagonal colour gradients that drift a few pixels a frame, made one at a time."""
    y, x = np.mgrid[0:height, 0:width]
    for t in range(count):
        channels = ((x * 4 + t * 5) % 256, (y * 5 + t * 3) % 256, ((x + y) * 2 + t * 7) % 256)
        yield np.stack(channels, axis=-1).astype(np.uint8)


def rss_kb(field: str) -> int:
    """VmRSS or VmHWM of this process, in kB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def one_mode(args: argparse.Namespace) -> None:
    """Run one mode in this process and print its figures as a JSON line."""
    from PIL import Image

    from likeness.media.video_upscale import VideoUpscaleConfig, upscale_video
    from likeness.models.pipelines import get_pipeline
    from likeness.models.profiles import load_profile
    from tasks.upscale import esrgan_upscale

    model = get_pipeline("upscaler", load_profile("tiny"))

    def upscale(tile: Image.Image) -> Image.Image:
        return esrgan_upscale(model, tile)

    upscale(Image.new("RGB", (8, 8)))
    whole = args.mode == "whole"
    config = VideoUpscaleConfig(
        long_side=args.long_side,
        chunk_frames=args.frames if whole else args.chunk_frames,
        tile=max(args.width, args.height) if whole else args.tile,
        overlap=args.overlap,
        max_memory_mb=64 * 1024,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.mp4"
        # Writing 5 to clear_refs resets the peak RSS to the current RSS (Linux).
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_kb("VmRSS")
        started = time.perf_counter()
        figures = upscale_video(moving_gradient(args.frames, args.width, args.height), 24, upscale, 4, config, out)
        seconds = time.perf_counter() - started
        rss_peak = (rss_kb("VmHWM") - before) * 1024
        tracemalloc.start()
        upscale_video(moving_gradient(args.frames, args.width, args.height), 24, upscale, 4, config, out)
        traced_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print(json.dumps({**figures, "seconds": seconds, "rss_peak": rss_peak, "traced_peak": traced_peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=90)
    parser.add_argument("--long-side", type=int, default=640)
    parser.add_argument("--chunk-frames", type=int, default=8)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=8)
    parser.add_argument("--mode", choices=["chunked", "whole"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        one_mode(args)
        return
    results = {}
    for mode in ("chunked", "whole"):
        child = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--mode", mode], check=True, capture_output=True, text=True
        )
        results[mode] = json.loads(child.stdout.splitlines()[-1])
    size = results["chunked"]["size"]
    print(f"{args.frames} frames {args.width}x{args.height} -> {size[0]}x{size[1]} (tiny ESRGAN 4x, CPU)")
    print(f"{'':<9}{'chunk':>6}{'tiles':>6}{'estimate MB':>12}{'traced MB':>10}{'RSS MB':>8}{'wall s':>8}")
    for mode, r in results.items():
        print(
            f"{mode:<9}{r['chunk_frames']:>6}{r['tiles_per_frame']:>6}{r['estimated_peak_bytes'] / MB:>12.1f}"
            f"{r['traced_peak'] / MB:>10.1f}{r['rss_peak'] / MB:>8.1f}{r['seconds']:>8.2f}"
        )
    chunked, whole = results["chunked"], results["whole"]
    print(
        f"chunked / whole: traced peak {chunked['traced_peak'] / whole['traced_peak']:.2f}, "
        f"RSS peak {chunked['rss_peak'] / whole['rss_peak']:.2f}, wall time {chunked['seconds'] / whole['seconds']:.2f}"
    )


if __name__ == "__main__":
    main()
