"""Train: a character LoRA on the Wan transformer with peft, from the captioned dataset.

Each dataset image is one frame; the loss is rectified-flow velocity matching, as Wan was trained.
Checkpoints are saved every `checkpoint_every` steps in the diffusers LoRA format that
`WanPipeline.load_lora_weights` reads, named like AI Toolkit's (`<trigger>_000000500.safetensors`).

    lora = fit_lora.fn(dataset, load_profile("tiny").train, load_profile("tiny"))
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from likeness.config import ModelProfile, TrainConfig
from likeness.media.imaging import square
from likeness.models.pipelines import get_pipeline, gpu_lock
from likeness.records import DatasetRef, LoraCheckpoint, LoraRef
from likeness.run.interrupts import check_stop
from likeness.run.progress import StageProgress
from likeness.stages import stage_task
from likeness.storage.artifacts import load_image, put_file

if TYPE_CHECKING:
    import torch

STAGE_VERSION = 1
ADAPTER = "likeness_training"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def encode_frames(pipe, images, size: int) -> torch.Tensor:
    """Normalised Wan VAE latents (N, C, 1, h, w) of the images, each as a one-frame video."""
    import torch

    vae = pipe.vae
    pixels = np.stack([np.asarray(square(image, size), dtype=np.float32) / 127.5 - 1.0 for image in images])
    video = torch.from_numpy(pixels).permute(0, 3, 1, 2)[:, :, None].to(vae.device, vae.dtype)
    latents = vae.encode(video).latent_dist.mode()
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(latents)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(latents)
    return (latents - mean) / std


def flow_matching_loss(pipe, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Velocity loss at a random noise level: the transformer predicts noise - data."""
    import torch

    transformer = pipe.transformer
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    sigma = torch.rand((latents.shape[0],), generator=generator).to(latents)
    noisy = (1 - sigma.view(-1, 1, 1, 1, 1)) * latents + sigma.view(-1, 1, 1, 1, 1) * noise
    timestep = sigma * pipe.scheduler.config.num_train_timesteps
    if pipe.config.expand_timesteps:
        patch = transformer.config.patch_size
        tokens = latents.shape[2] // patch[0] * (latents.shape[3] // patch[1]) * (latents.shape[4] // patch[2])
        timestep = timestep[:, None].expand(-1, tokens)
    prediction = transformer(
        hidden_states=noisy.to(transformer.dtype),
        timestep=timestep,
        encoder_hidden_states=text.to(transformer.dtype),
        return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(prediction.float(), (noise - latents).float())


def save_checkpoint(pipe, folder: Path, filename: str) -> Path:
    from diffusers import WanPipeline
    from peft.utils import get_peft_model_state_dict

    layers = get_peft_model_state_dict(pipe.transformer, adapter_name=ADAPTER)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=layers, weight_name=filename)
    return folder / filename


@stage_task("fit-lora", STAGE_VERSION, retries=1, retry_delay_seconds=30)
def fit_lora(dataset: DatasetRef, config: TrainConfig, profile: ModelProfile) -> LoraRef:
    """Train the character LoRA, saving a checkpoint every `checkpoint_every` steps."""
    import torch
    from peft import LoraConfig

    pipe = get_pipeline("video", profile)
    progress = StageProgress("train", config.steps, artifact_key=f"{dataset.trigger}-train")
    checkpoints: list[LoraCheckpoint] = []
    with gpu_lock, tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            latents = encode_frames(pipe, [load_image(item.image) for item in dataset.items], config.size)
            texts = [pipe.encode_prompt(item.caption, do_classifier_free_guidance=False)[0] for item in dataset.items]
        transformer = pipe.transformer
        # The LoRA's initial weights come from the global RNG: seed it, or a re-run differs.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            transformer.add_adapter(
                LoraConfig(
                    r=config.rank, lora_alpha=config.rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
                ),
                adapter_name=ADAPTER,
            )
        try:
            transformer.set_adapter(ADAPTER)
            trainable = [p for p in transformer.parameters() if p.requires_grad]
            for parameter in trainable:
                parameter.data = parameter.data.float()
            optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate)
            generator = torch.Generator("cpu").manual_seed(config.seed)
            order = torch.randperm(len(texts), generator=generator).tolist()
            for step in range(1, config.steps + 1):
                check_stop()
                index = order[(step - 1) % len(order)]
                # latents live where the model runs, also when offload keeps the weights on the CPU.
                with torch.autocast(
                    latents.device.type, dtype=transformer.dtype, enabled=transformer.dtype != torch.float32
                ):
                    loss = flow_matching_loss(pipe, latents[index : index + 1], texts[index], generator)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress.advance(f"loss {loss.item():.4f}")
                if step % config.checkpoint_every == 0 or step == config.steps:
                    path = save_checkpoint(pipe, Path(tmp), f"{dataset.trigger}_{step:09d}.safetensors")
                    checkpoints.append(LoraCheckpoint(step=step, loss=loss.item(), weights=put_file(path)))
        finally:
            transformer.delete_adapters(ADAPTER)
            transformer.requires_grad_(False)
    return LoraRef(trigger=dataset.trigger, base_model=profile.models["video"].source, checkpoints=tuple(checkpoints))
