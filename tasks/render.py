"""Render: Wan text-to-image (one frame) and text-to-video with the character LoRA.

item = render_media.fn(lora.final.weights, "video", "ada waves", load_profile("tiny").render, 0, load_profile("tiny"))
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Literal

from likeness.config import ModelProfile, RenderConfig
from likeness.media.imaging import encode_mp4, to_pil
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.records import RenderItem
from likeness.run.interrupts import stop_between_steps
from likeness.stages import stage_task
from likeness.storage.artifacts import ArtifactRef, get_bytes, put_bytes, put_image

STAGE_VERSION = 1
ADAPTER = "likeness_character"


def render_filename(kind: str, prompt: str, seed: int, lora: ArtifactRef, config: RenderConfig) -> str:
    """A name that differs whenever the output would: renders never overwrite each other."""
    digest = hashlib.sha256(f"{kind}|{prompt}|{seed}|{lora.sha256}|{config.model_dump_json()}".encode()).hexdigest()[
        :10
    ]
    return f"{kind}_s{seed}_{digest}.{'png' if kind == 'image' else 'mp4'}"


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
    import torch

    frames = 1 if kind == "image" else config.video_frames
    pipe = get_pipeline("video", profile)
    with gpu_lock, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / lora.filename).write_bytes(get_bytes(lora))
        pipe.load_lora_weights(tmp, weight_name=lora.filename, adapter_name=ADAPTER)
        if low_noise is not None:
            (Path(tmp) / low_noise.filename).write_bytes(get_bytes(low_noise))
            pipe.load_lora_weights(
                tmp, weight_name=low_noise.filename, adapter_name=ADAPTER, load_into_transformer_2=True
            )
        try:
            pipe.set_adapters([ADAPTER], adapter_weights=[config.lora_scale])
            video = pipe(
                prompt=prompt,
                negative_prompt=config.negative_prompt,
                height=config.size,
                width=config.size,
                num_frames=frames,
                num_inference_steps=config.steps,
                guidance_scale=config.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=stop_between_steps,
                output_type="np",
            ).frames[0]
        finally:
            pipe.delete_adapters(ADAPTER)
    filename = render_filename(kind, prompt, seed, lora, config)
    output = (
        put_image(to_pil(video[0]), filename) if kind == "image" else put_bytes(encode_mp4(video, config.fps), filename)
    )
    return RenderItem(
        kind=kind,
        prompt=prompt,
        negative_prompt=config.negative_prompt,
        seed=seed,
        frames=frames,
        steps=config.steps,
        size=config.size,
        lora=lora,
        lora_scale=config.lora_scale,
        model=profile.models["video"].source,
        output=output,
    )
