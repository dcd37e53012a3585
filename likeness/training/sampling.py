"""Our trainer's samples of a checkpoint: one image per sample prompt, fixed seeds, the images the best checkpoint
is chosen on (and `train.stop_when_flat` scores).

`train.sampler` "render" samples as `render` runs the video model, so that the checkpoint chosen is the best where
it will be used: where the model has speed LoRAs (production's A14B), those at strength 1 beside the LoRA being
trained, Euler on their sigmas and no CFG, one transformer evaluation a step (4 a sample). "training", and a model
without speed LoRAs, samples `train.sample_steps` of the model's own scheduler at `train.sample_guidance_scale`.

    prompts = encode_sample_prompts(pipe, job)  # before the first step
    paths = write_samples(pipe, job, training_folder, 500, [pipe.transformer, pipe.transformer_2], ADAPTER, prompts)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from likeness.config import ModelSpec, render_template
from likeness.files import atomic_file
from likeness.models.speed_loras import LIGHTX2V_GUIDANCE_SCALE, speed_loras_on
from likeness.training.spec import SAMPLES_FOLDER, TrainJob

# WanPipeline's default `max_sequence_length` for a call: the tokens a render's prompt is padded to.
SAMPLE_TEXT_TOKENS = 512


class SampleSettings(NamedTuple):
    """How a checkpoint is sampled: the pipeline's steps and guidance, and whether with the speed LoRAs."""

    steps: int
    guidance_scale: float
    speed_loras: bool


def sample_settings(job: TrainJob) -> SampleSettings:
    """How `job`'s checkpoints are sampled (`train.sampler`)."""
    config, model = job.config, job.model
    if config.sampler == "render" and model.speed_loras:
        return SampleSettings(len(model.speed_sigmas), LIGHTX2V_GUIDANCE_SCALE, True)
    return SampleSettings(config.sample_steps, config.sample_guidance_scale, False)


class EncodedPrompt(NamedTuple):
    """A sample prompt's text embedding, and the empty negative prompt's where the samples use CFG."""

    embeds: Any
    negative: Any | None


def encode_sample_prompts(pipe: Any, job: TrainJob) -> list[EncodedPrompt]:
    """Every sample prompt encoded as the pipeline encodes a call's (`max_sequence_length` as its call's default):
    once, before training's first step, so that the text encoder can wait in CPU memory while training runs."""
    import torch

    guided = sample_settings(job).guidance_scale > 1
    with torch.no_grad():
        return [
            EncodedPrompt(
                *pipe.encode_prompt(
                    render_template(template, trigger=job.trigger),
                    do_classifier_free_guidance=guided,
                    max_sequence_length=SAMPLE_TEXT_TOKENS,
                )
            )
            for template in job.config.sample_prompts
        ]


def write_samples(
    pipe: Any,
    job: TrainJob,
    training_folder: Path,
    step: int,
    trained: list[Any],
    adapter: str,
    prompts: list[EncodedPrompt],
) -> list[Path]:
    """One image per sample prompt (`prompts`, from `encode_sample_prompts`) with the LoRA as of `step` (adapter
    `adapter` of the `trained` transformers), fixed seeds, saved in the training folder's samples folder; training's
    adapters, trainable weights and scheduler are as they were after."""
    import torch

    folder = training_folder / SAMPLES_FOLDER
    folder.mkdir(exist_ok=True)
    settings = sample_settings(job)
    size = job.config.size
    paths = []
    with _speed_loras(pipe, job.model, trained, adapter) if settings.speed_loras else nullcontext():
        for index, prompt in enumerate(prompts):
            frames = pipe(
                prompt_embeds=prompt.embeds,
                negative_prompt_embeds=prompt.negative,
                height=size,
                width=size,
                num_frames=1,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance_scale,
                generator=torch.Generator("cpu").manual_seed(job.config.seed + index),
                output_type="np",
            ).frames[0]
            path = folder / job.sample_filename(step, index)
            with atomic_file(path) as file:
                Image.fromarray((np.clip(frames[0], 0, 1) * 255).round().astype(np.uint8)).save(file, format="PNG")
            paths.append(path)
    return paths


@contextmanager
def _speed_loras(pipe: Any, model: ModelSpec, trained: list[Any], adapter: str) -> Iterator[None]:
    """The model's speed LoRAs and their scheduler on beside `adapter`, as a render has them; then training's state
    again: the speed LoRAs deleted, the scheduler back, `adapter` the active one and every weight of the `trained`
    transformers as trainable as before."""
    # Loading an adapter makes it the only active one and deleting it activates what is left, each flipping the
    # weights' requires_grad on the way: what trains is put back as it was rather than left to peft.
    trainable = [{name: p.requires_grad for name, p in transformer.named_parameters()} for transformer in trained]
    try:
        with speed_loras_on(pipe, model) as speed:
            # At the strengths a render takes where none is set: 1.0 each.
            pipe.set_adapters([adapter, *speed], adapter_weights=[1.0] * (1 + len(speed)))
            yield
    finally:
        for transformer, was in zip(trained, trainable, strict=True):
            transformer.set_adapter(adapter)
            parameters = dict(transformer.named_parameters())
            for name, requires_grad in was.items():
                parameters[name].requires_grad_(requires_grad)
