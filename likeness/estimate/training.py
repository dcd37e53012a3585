"""A LoRA's training as the estimate counts it: the steps, the checkpoints' samples, the encodes before, where
`train.stop_when_flat` is expected to stop, and whether gradient checkpointing is on for a GPU.

    work = training_work(checkpointing_decided(config.train, 32, profile, 80 * 2**30), 32, profile)
"""

from __future__ import annotations

import math

from likeness.config import Backend, ModelProfile, TrainConfig
from likeness.estimate import roles
from likeness.estimate.calibration import training_part
from likeness.estimate.work import BF16_BYTES, Count, Work, choose_mode

# Where a character's identity scores stop improving, as a share of the training steps: an assumption (a character's
# own plateau is known only once it trains), for what `train.stop_when_flat` is expected to save.
PLATEAU_SHARE = 0.6
# LoRA weights train in float32 with AdamW: the weight, its gradient and two moments, 4 bytes each.
LORA_STATE_BYTES = 16


def training_work(train: TrainConfig, images: int, profile: ModelProfile, backend: Backend = "local") -> Work:
    """A LoRA's training on `images` with `backend`: the steps, the samples of its checkpoints, the encodes before."""
    video = profile.models["video"]
    # Our trainer samples with the speed LoRAs as renders run (`train.sampler`); AI Toolkit samples its own way.
    speeds = train.sampler == "render" and bool(video.speed_loras) and backend != "runpod-aitoolkit"
    speed_steps = len(video.speed_sigmas) if speeds else None
    step = roles.lora_training_step(train.base, train.size, train.rank, train.gradient_checkpointing)
    experts = train.trained_experts
    family = "video-5b" if train.base == "wan22_5b" else "video"
    # The trainer holds its whole pipeline on the GPU (the text encoder and VAE too); AI Toolkit's low-VRAM mode
    # offloads.
    work = Work("training", offload="model" if train.low_vram else "none", calibrated_part=training_part(train.base))
    work.parameters = {
        **dict.fromkeys(experts, step["parameters"]),
        "text_encoder": roles.parameter_count("video.text_encoder"),
        "vae": roles.parameter_count(f"{family}.vae_decode"),
    }
    # The samples at the checkpoints chosen from (as likeness.training.spec.TrainJob.sampled_steps): each a
    # denoise at the training size, the experts sharing the steps: the speed LoRAs' steps without CFG (as
    # likeness.training.sampling), or `sample_steps`, twice with CFG.
    sample_evaluations = speed_steps or train.sample_steps * (2 if train.sample_guidance_scale > 1 else 1)
    checkpoints = {*range(train.checkpoint_every, train.steps + 1, train.checkpoint_every), train.steps}
    sampled = sorted({*range(train.sample_interval, train.steps + 1, train.sample_interval), train.steps} & checkpoints)
    # Before the steps: each image encoded once (at the largest resolution) and each caption, and the empty one.
    shape = {"frames": 1, "width": train.size, "height": train.size}
    encode = images * roles.evaluation_flops(f"{family}.vae_encode", **shape)
    text = (images + 1) * roles.evaluation_flops("video.text_encoder")
    # Offloaded, an expert comes in at each turn (`switch_boundary_every` steps), and streams in at every pass: the
    # forward, the backward and, with gradient checkpointing, the forward again.
    passes = 3 if train.gradient_checkpointing else 2

    def until(last: int) -> tuple[Count, int]:
        """Training that ends at step `last`, and its evaluations."""
        sample_images = sum(1 for at in sampled if at <= last) * len(train.sample_prompts)
        sample_passes = sample_images * sample_evaluations
        decode = sample_images * roles.evaluation_flops(f"{family}.vae_decode", **shape)
        flops = last * step["step"] + sample_passes * step["forward"] + encode + text + decode
        turns = math.ceil(last / train.switch_boundary_every) if len(experts) > 1 else 1
        count = Count(flops, turns * step["parameters"] * BF16_BYTES, last * passes + sample_passes)
        return count, last + sample_passes

    (expected, work.evaluations), (most, _) = until(flat_stop(train, sampled)), until(train.steps)
    work.add(expected, most)
    for expert in experts:
        work.working(expert, step["activation_bytes"])
    work.state_bytes = len(experts) * step["lora_parameters"] * LORA_STATE_BYTES
    # Every caption and sample prompt is encoded before the first step; then the text encoder waits in CPU memory.
    work.off_after_encoding = frozenset({"text_encoder"})
    return work


def checkpointing_decided(train: TrainConfig, images: int, profile: ModelProfile, memory: float | None) -> TrainConfig:
    """`train` with `gradient_checkpointing: auto` decided for a GPU of `memory` bytes: off where training without it
    holds the video model resident there (in the profile's memory mode), on otherwise and where the GPU is unknown."""
    if train.gradient_checkpointing != "auto":
        return train
    if memory is not None:
        off = train.model_copy(update={"gradient_checkpointing": False})
        if choose_mode(training_work(off, images, profile), memory, profile.memory_mode("video")).mode == "none":
            return off
    return train.model_copy(update={"gradient_checkpointing": True})


def flat_stop(train: TrainConfig, sampled: list[int]) -> int:
    """The step training is expected to end at: under `train.stop_when_flat`, the first sampled step the rule stops
    at once the scores are flat from PLATEAU_SHARE of the steps on (as likeness.training.checkpoints.flat_since);
    else the last."""
    rule = train.stop_when_flat
    if rule is None:
        return train.steps
    flat = [at for at in sampled if at > PLATEAU_SHARE * train.steps]
    stops = [at for count, at in enumerate(flat, 1) if count >= rule.patience and at >= rule.min_step]
    return min([*stops, train.steps])
