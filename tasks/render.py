"""Render: Wan text-to-image (one frame) and text-to-video with the character LoRA, post FX, and the lineage in
the file.

The image is a PNG whose text chunks carry its settings (`parameters` in the form other image tools write, and
`likeness` as JSON); the video an H.264 yuv420p MP4 whose `title` is the prompt and whose `comment` is the same
JSON. Post FX (`render.fx`) go over the image and every frame, with the render's seed.

item = render_media.fn(lora.best.weights, "video", "ada waves", load_profile("tiny").render, 0, load_profile("tiny"))
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from likeness import __version__
from likeness.config import ModelProfile, RenderConfig
from likeness.media.imaging import encode_mp4, square
from likeness.media.post_fx import apply_post_fx_to_frames, post_fx_preset
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.models.speed_loras import speed_loras_on
from likeness.records import RenderItem, SpeedLoraUse
from likeness.run.interrupts import stop_between_steps
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, get_bytes, load_image, put_bytes

STAGE_VERSION = 3
ADAPTER = "likeness_character"


def render_filename(kind: str, prompt: str, seed: int, lora: ArtifactRef, config: RenderConfig) -> str:
    """A name that differs whenever the output would: renders never overwrite each other."""
    digest = hashlib.sha256(f"{kind}|{prompt}|{seed}|{lora.sha256}|{_settings_json(config)}".encode()).hexdigest()
    return f"{kind}_s{seed}_{digest[:10]}.{'png' if kind == 'image' else 'mp4'}"


def _settings_json(config: RenderConfig) -> str:
    # The probe's settings shape a render only through the strengths it chose, which are in `config` by now.
    return config.model_dump_json(exclude={"probe"})


def lineage(item: dict[str, Any]) -> dict[str, Any]:
    """What made a render, as written into its file: prompts, seed, models, LoRAs and strengths, post FX, steps."""
    loras = [{"file": item["lora"].filename, "sha256": item["lora"].sha256, "scale": item["lora_scale"]}]
    if item["low_noise_lora"] is not None:
        low = item["low_noise_lora"]
        loras.append({"file": low.filename, "sha256": low.sha256, "scale": item["lora_scale"], "expert": "low_noise"})
    loras += [{**speed.model_dump(mode="json"), "kind": "speed"} for speed in item["speed_loras"]]
    fields = ("kind", "prompt", "negative_prompt", "seed", "frames", "steps", "size", "guidance_scale", "fps", "fx")
    return {**{name: item[name] for name in fields}, "model": item["model"], "loras": loras, "likeness": __version__}


def parameters_text(record: dict[str, Any]) -> str:
    """The settings in the `parameters` text other image tools write and read (prompt, negative, then a line)."""
    loras = ", ".join(f"{lora['file']}:{lora['scale']}" for lora in record["loras"])
    settings = (
        f"Steps: {record['steps']}, CFG scale: {record['guidance_scale']}, Seed: {record['seed']}, "
        f"Size: {record['size']}x{record['size']}, Model: {record['model']}, Lora: {loras}, Post FX: {record['fx']}"
    )
    return f"{record['prompt']}\nNegative prompt: {record['negative_prompt']}\n{settings}"


def png_with_lineage(frame: np.ndarray, record: dict[str, Any]) -> bytes:
    """The frame as PNG bytes with its lineage in text chunks."""
    info = PngInfo()
    info.add_text("parameters", parameters_text(record))
    info.add_text("likeness", json.dumps(record, sort_keys=True))
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def _uint8(frames: np.ndarray) -> np.ndarray:
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _generate(
    role: Literal["video", "animator"],
    profile: ModelProfile,
    lora: ArtifactRef,
    low_noise: ArtifactRef | None,
    config: RenderConfig,
    seed: int,
    **call: Any,
) -> np.ndarray:
    """Frames (T, H, W, 3 uint8) of the role's pipeline with the character LoRA, its speed LoRAs and the post FX."""
    import torch

    pipe = get_pipeline(role, profile)
    with gpu_lock, tempfile.TemporaryDirectory() as tmp, speed_loras_on(pipe, profile.models[role], role) as speed:
        (Path(tmp) / lora.filename).write_bytes(get_bytes(lora))
        pipe.load_lora_weights(tmp, weight_name=lora.filename, adapter_name=ADAPTER)
        if low_noise is not None:
            (Path(tmp) / low_noise.filename).write_bytes(get_bytes(low_noise))
            pipe.load_lora_weights(
                tmp, weight_name=low_noise.filename, adapter_name=ADAPTER, load_into_transformer_2=True
            )
        try:
            pipe.set_adapters(
                [ADAPTER, *speed], adapter_weights=[config.lora_scale, *[config.speed_lora_scale] * len(speed)]
            )
            video = pipe(
                negative_prompt=config.negative_prompt,
                height=config.size,
                width=config.size,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=stop_between_steps,
                output_type="np",
                **call,
            ).frames[0]
        finally:
            pipe.delete_adapters(ADAPTER)
    fx = post_fx_preset(config.fx).model_copy(update={"seed": seed})
    return np.stack(list(apply_post_fx_to_frames(_uint8(video), fx)))


def _stored(fields: dict[str, Any], frames: np.ndarray, config: RenderConfig, filename: str) -> RenderItem:
    """The render in the store with its lineage inside (PNG text chunks, MP4 tags), and its record."""
    record = lineage(fields)
    if fields["kind"] == "image":
        output = put_bytes(png_with_lineage(frames[0], record), filename)
    else:
        metadata = {"title": fields["prompt"], "comment": json.dumps(record, sort_keys=True)}
        output = put_bytes(encode_mp4(frames, config.fps, metadata), filename)
    return RenderItem(**fields, output=output)


def _fields(
    kind: str, prompt: str, seed: int, frames: int, config: RenderConfig, lora: ArtifactRef,
    low_noise: ArtifactRef | None, profile: ModelProfile, role: Literal["video", "animator"],
) -> dict[str, Any]:  # fmt: skip
    spec = profile.models[role]
    speed = tuple(
        SpeedLoraUse(source=lora.source, file=lora.file, expert=expert, scale=config.speed_lora_scale)
        for expert, lora in spec.speed_loras.items()
    )
    return {
        "kind": kind,
        "prompt": prompt,
        "negative_prompt": config.negative_prompt,
        "seed": seed,
        "frames": frames,
        "steps": config.steps,
        "size": config.size,
        "guidance_scale": config.guidance_scale,
        "fps": None if kind == "image" else config.fps,
        "fx": config.fx,
        "lora": lora,
        "low_noise_lora": low_noise,
        "lora_scale": config.lora_scale,
        "model": spec.source,
        "speed_loras": speed,
    }


@stage_task("render-media", STAGE_VERSION)
def render_media(
    lora: ArtifactRef,
    kind: Literal["image", "video"],
    prompt: str,
    config: RenderConfig,
    seed: int,
    profile: ModelProfile,
    low_noise: ArtifactRef | None = None,
) -> RenderItem:
    """Render one image or video with the LoRA at `config.lora_scale` (and an A14B LoRA's low-noise file)."""
    # A strength no setting and no probe chose renders at 1.0.
    config = config.with_strengths()
    frames = 1 if kind == "image" else config.video_frames
    video = _generate("video", profile, lora, low_noise, config, seed, prompt=prompt, num_frames=frames)
    fields = _fields(kind, prompt, seed, frames, config, lora, low_noise, profile, "video")
    return _stored(fields, video, config, render_filename(kind, prompt, seed, lora, config))


@stage_task("animate-still", STAGE_VERSION)
def animate_still(
    still: ArtifactRef,
    lora: ArtifactRef,
    prompt: str,
    config: RenderConfig,
    seed: int,
    profile: ModelProfile,
    low_noise: ArtifactRef | None = None,
) -> RenderItem:
    """A video that starts from `still` (a render of the character), with Wan 2.2 image-to-video and the LoRA."""
    config = config.with_strengths()
    image = square(load_image(still), config.size)
    call = {"prompt": prompt, "image": image, "num_frames": config.video_frames}
    video = _generate("animator", profile, lora, low_noise, config, seed, **call)
    fields = _fields("video", prompt, seed, config.video_frames, config, lora, low_noise, profile, "animator")
    digest = hashlib.sha256(f"{still.sha256}|{prompt}|{seed}|{lora.sha256}|{_settings_json(config)}".encode())
    return _stored(fields, video, config, f"animated_s{seed}_{digest.hexdigest()[:10]}.mp4")
