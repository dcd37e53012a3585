"""Upscale video: a rendered clip to `render.upscale_long_side` (3840: 4K) with the upscaler role's ESRGAN, in
temporal chunks and overlapping tiles whose working memory stays under `render.upscale_memory_mb`, streamed to
H.264 (`likeness.media.video_upscale`).

    big = upscale_render.fn(item.output, item.fps, load_profile("tiny").render, load_profile("tiny"))
"""

from __future__ import annotations

import json
import tempfile
from functools import partial
from pathlib import Path

from likeness.config import ModelProfile, RenderConfig
from likeness.media.imaging import read_mp4_metadata
from likeness.media.video_upscale import VideoUpscaleConfig, read_frames, upscale_video
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, get_bytes, put_file
from tasks.upscale import esrgan_upscale

STAGE_VERSION = 1


@stage_task("upscale-video", STAGE_VERSION)
def upscale_render(video: ArtifactRef, fps: int, config: RenderConfig, profile: ModelProfile) -> ArtifactRef:
    """The clip upscaled to the configured long side, as an MP4 beside the render."""
    assert config.upscale_long_side is not None
    model = get_pipeline("upscaler", profile)
    upscale = VideoUpscaleConfig(long_side=config.upscale_long_side, max_memory_mb=config.upscale_memory_mb)
    with gpu_lock, tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / video.filename, Path(tmp) / "upscaled.mp4"
        source.write_bytes(get_bytes(video))
        # The render's lineage, and what upscaled it.
        tags = {name: value for name, value in read_mp4_metadata(source).items() if name in ("title", "comment")}
        if "comment" in tags:
            record = {
                **json.loads(tags["comment"]),
                "upscaled": {"long_side": config.upscale_long_side, "model": profile.models["upscaler"].source},
            }
            tags["comment"] = json.dumps(record, sort_keys=True)
        upscale_video(read_frames(source), fps, partial(esrgan_upscale, model), model.scale, upscale, target, tags)
        return put_file(target, filename=f"{Path(video.filename).stem}_{config.upscale_long_side}p.mp4")
