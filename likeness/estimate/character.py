"""What one character costs under a profile and its settings, stage by stage, before any GPU is rented.

Each stage's evaluations come from the run's settings (shots in the catalogue, steps, CFG, tiles, frames,
training steps, checkpoint samples); each evaluation's FLOPs from the real-size models counted on the meta
device (`likeness.estimate.roles`); seconds, memory and dollars from the GPU model (`likeness.estimate.gpus`).

    rows = estimate_character(load_profile("production"), config, load_catalogue(), GPUS["H100"], price)

Counted: every transformer evaluation, the text encoders, the VAEs, the upscaler, the captioner and the identity
model. Not counted: a shot curation refuses and edits again (each try costs one more edit: the worst case is
`dataset.curation.max_tries` times the edit row), the identity guard's region refines, model loading and pod
start. Weights resident at once decide the memory; activations are left out (a 720p 81-frame Wan evaluation adds
a few GB with attention kernels that do not materialise the attention matrix).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from likeness.config import ModelProfile, RunConfig
from likeness.dataset.catalogue import Catalogue, shot_size
from likeness.estimate import gpus, roles
from likeness.estimate.gpus import GpuType, MemoryMode, Price
from likeness.media.tiling import tile_grid
from likeness.models import wan_flops
from likeness.records import StageCost
from likeness.render.jobs import plan_renders

EDIT_MULTIPLE = 16  # Qwen-Image's VAE downsamples 8x and its transformer packs 2x2 patches
BF16_BYTES = 2
# The largest part's share resident under sequential offload: about one of its ~40 blocks.
SEQUENTIAL_SHARE = 1 / 40


class StageEstimate(NamedTuple):
    """One stage of a character: its model evaluations, FLOPs, and what they take on one GPU."""

    stage: str
    evaluations: int
    flops: float
    seconds: float
    peak_bytes: int
    memory_mode: MemoryMode | None  # None: it fits no mode on this GPU
    usd: float


def estimate_character(
    profile: ModelProfile, config: RunConfig, catalogue: Catalogue, gpu: GpuType, price: Price
) -> list[StageEstimate]:
    """The stages of one character (dataset, training, renders) on `gpu` at `price`, in run order; ValueError for
    a profile of tiny twins, whose real-size counts would say nothing about it."""
    tiny = sorted(role for role, spec in profile.models.items() if spec.source.startswith("tiny:"))
    if tiny:
        raise ValueError(
            f"profile {profile.name!r} runs tiny twins ({', '.join(tiny)}): the estimate counts real models; "
            "give a production profile (--profile production)"
        )
    stages = [*_dataset_stages(config, catalogue), _training(config), _rendering(config, profile)]
    return [_on_gpu(name, evaluations, flops, parts, gpu, price) for name, evaluations, flops, parts in stages]


Work = tuple[str, int, float, dict[str, int]]  # stage, evaluations, FLOPs, parameters resident by part


def _dataset_stages(config: RunConfig, catalogue: Catalogue) -> list[Work]:
    dataset = config.dataset
    edit, upscale = dataset.edit, dataset.upscale
    shots = catalogue.shots(dataset.variations, garments=0, poses=0)
    cfg = 2 if edit.true_cfg_scale > 1 else 1
    edit_evaluations = edit_flops = 0.0
    refine_evaluations = refine_flops = upscale_flops = caption_flops = 0.0
    for shot in shots:
        width, height = shot_size(shot.aspect, edit.size, EDIT_MULTIPLE)
        conditions = 1 + (shot.needs is not None)
        shape = {"conditions": conditions, "vl_condition_area": edit.vl_condition_area, "prompt_tokens": 80}
        edit_evaluations += edit.steps * cfg
        edit_flops += (
            edit.steps
            * cfg
            * roles.evaluation_flops(
                "editor.transformer", width=width, height=height, condition_area=edit.condition_area, **shape
            )
        )
        edit_flops += cfg * roles.evaluation_flops("editor.text_encoder", **shape)
        edit_flops += conditions * roles.evaluation_flops("editor.vae_encode")
        edit_flops += roles.evaluation_flops("editor.vae_decode", width=width, height=height)
        edit_flops += 2 * roles.evaluation_flops("identity")  # measured, and its face compared

        esrgan_tiles = len(tile_grid(width, height, upscale.esrgan_tile, upscale.esrgan_overlap))
        upscale_flops += esrgan_tiles * roles.evaluation_flops("upscaler")
        scale = upscale.size / max(width, height)
        target = (round(width * scale), round(height * scale))
        tiles = len(tile_grid(*target, upscale.tile, upscale.overlap))
        steps = upscale.steps - upscale.start_step
        refine_evaluations += tiles * steps
        refine_flops += tiles * (
            steps * roles.evaluation_flops("refiner.transformer")
            + roles.evaluation_flops("refiner.vae_encode")
            + roles.evaluation_flops("refiner.vae_decode")
        )
        refine_flops += roles.evaluation_flops("refiner.text_encoder") + roles.evaluation_flops(
            "refiner.text_encoder_2"
        )
        caption_flops += roles.evaluation_flops(
            "captioner",
            width=target[0],
            height=target[1],
            prompt_tokens=100,
            new_tokens=config.dataset.caption.max_new_tokens,
        )
    editor = {part: roles.parameter_count(f"editor.{part}") for part in ("transformer", "text_encoder", "vae_decode")}
    refiner = {
        part: roles.parameter_count(f"refiner.{part}")
        for part in ("transformer", "text_encoder", "text_encoder_2", "vae_decode")
    }
    return [
        ("dataset: edit", int(edit_evaluations), edit_flops, editor),
        ("dataset: upscale + refine", int(refine_evaluations), upscale_flops + refine_flops,
         {**refiner, "upscaler": roles.parameter_count("upscaler")}),
        ("dataset: caption", len(shots), caption_flops, {"captioner": roles.parameter_count("captioner")}),
    ]  # fmt: skip


def _training(config: RunConfig) -> Work:
    from likeness.training.wan_lora import LORA_TARGETS

    train = config.train
    model = wan_flops.meta_transformer(train.base, train.rank, LORA_TARGETS)
    forward, backward = wan_flops.count_evaluation(
        model, wan_flops.latent_shape(train.base, 1, train.size, train.size), backward=True
    )
    passes = 2 if train.gradient_checkpointing else 1  # checkpointing runs the forward pass again in the backward
    every = train.sample_every or train.checkpoint_every
    samples = len(range(every, train.steps + 1, every)) * len(train.sample_prompts) * train.sample_steps
    samples *= 2 if train.sample_guidance_scale > 1 else 1
    flops = train.steps * (passes * forward + backward) + samples * forward
    parameters = sum(p.numel() for p in model.parameters())
    return ("training", train.steps + samples, float(flops), {"transformer": parameters})


def _rendering(config: RunConfig, profile: ModelProfile) -> Work:
    render = config.render
    jobs = plan_renders(render, "character", None, profile.limits.render, beyond_limits=True)
    cfg = 2 if render.guidance_scale > 1 else 1
    # The A14B's two experts share the steps (one resident at a time under model offload); the TI2V-5B is one model.
    # Both decode with the Wan 2.1 VAE's cost: the 5B's own VAE is not counted separately.
    five_b = "TI2V-5B" in profile.models["video"].source
    transformer = "video-5b.transformer" if five_b else "video.transformer"
    evaluations = flops = 0.0
    for job in jobs:
        frames = job.config.video_frames if job.kind == "video" else 1
        shape = {"frames": frames, "width": job.config.size, "height": job.config.size}
        evaluations += job.config.steps * cfg
        flops += job.config.steps * cfg * roles.evaluation_flops(transformer, **shape)
        flops += roles.evaluation_flops("video.vae_decode", **shape)
        flops += math.ceil(frames / 4) * roles.evaluation_flops("identity")  # frames sampled for the score
    experts = ("transformer",) if five_b else ("high_noise", "low_noise")
    return ("renders", int(evaluations), flops, {expert: roles.parameter_count(transformer) for expert in experts})


def _on_gpu(
    stage: str, evaluations: int, flops: float, parts: dict[str, int], gpu: GpuType, price: Price
) -> StageEstimate:
    seconds = gpus.seconds(flops, gpu)
    block = int(max(parts.values()) * SEQUENTIAL_SHARE)
    mode = gpus.fit(gpu, parts, 0, BF16_BYTES, block)
    peak = gpus.peak_memory(parts, 0, BF16_BYTES, mode or "sequential", block)
    return StageEstimate(stage, evaluations, flops, seconds, peak, mode, seconds / 3600 * price.usd_per_hour)


def stage_costs(rows: list[StageEstimate], gpu: GpuType) -> tuple[StageCost, ...]:
    """The estimate as the run's record keeps it."""
    return tuple(
        StageCost(
            stage=row.stage,
            gpu=gpu.name,
            evaluations=row.evaluations,
            tflop=round(row.flops / 1e12, 1),
            seconds=round(row.seconds, 1),
            peak_gib=round(row.peak_bytes / 2**30, 1),
            memory_mode=row.memory_mode,
            usd=round(row.usd, 4),
        )
        for row in rows
    )
