"""Our training spec as AI Toolkit's job YAML, and what AI Toolkit writes and prints while it trains.

AI Toolkit (github.com/ostris/ai-toolkit, read at commit 27a03a91, 2026-08-21) runs `python run.py job.yaml`. The
YAML follows its examples `config/examples/train_lora_wan22_14b_24gb.yaml`, `train_lora_wan21_14b_24gb.yaml` and
its UI preset for Wan 2.2 TI2V-5B (`ui/src/app/jobs/new/options.tsx`); the values come from our `TrainJob`.

    from likeness.config import ModelSpec, TrainConfig
    from likeness.training.aitoolkit import aitoolkit_yaml
    from likeness.training.spec import TrainJob

    job = TrainJob(
        name="Ada_Lovelace", trigger="Ada_Lovelace",
        config=TrainConfig(base="wan22_5b", size=512, steps=2000, rank=32, learning_rate=1e-4),
        model=ModelSpec(source="Wan-AI/Wan2.2-TI2V-5B-Diffusers", licence="apache-2.0"),
        dtype="bfloat16", device="cuda",
    )
    print(aitoolkit_yaml(job, "/workspace/dataset", "/workspace/masks", "/workspace/output"))

What AI Toolkit writes into `<training_folder>/<name>/` (`BaseSDTrainProcess.save`, `.sample`,
`Wan2214bModel.save_lora`):

    config.yaml                          the job as it read it
    <name>_000000500.safetensors         the LoRA at step 500 (every `save_every` steps below the last)
    <name>.safetensors                   the LoRA at the last step: no step number in the name
    optimizer.pt                         the optimizer state of the newest save (spec.OPTIMIZER_STATE)
    samples/1724253062123__000000500_0.png
                                         one image per prompt: milliseconds since the epoch, two underscores, the
                                         9-digit step, the prompt's index (unpadded); `samples/.thumbs/` holds
                                         300 px JPEG thumbnails and `samples/.tmp/` files being written

For Wan 2.2 A14B each save is one file per trained expert: `<name>_000000500_high_noise.safetensors` and
`<name>_000000500_low_noise.safetensors` (at the last step `<name>_high_noise.safetensors`, ...); with one expert
only that expert's file. AI Toolkit counts steps from 0 and saves at the end of a step: the save named 500 holds
501 optimizer steps (and a resumed run starts again at step 500), the unnumbered last one all `steps`. It also
writes `_latent_cache/` and `_t_e_cache/` into the dataset folder, so that folder must be writable. Saves older than
`max_step_saves_to_keep` are deleted, so the YAML keeps them all: the best checkpoint is chosen on the samples after
training.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from likeness.config import EXPERTS, Expert, render_template
from likeness.inputs import InvalidInput
from likeness.training.spec import TrainJob

# Our base -> the `arch` attribute of AI Toolkit's model class (toolkit/models/wan21/wan21.py: Wan21;
# extensions_built_in/diffusion_models/wan22/: Wan2214bModel, Wan225bModel). An unknown arch is not an error
# there: it silently falls back to the Stable Diffusion loader.
ARCH: dict[str, str] = {"wan21_14b": "wan21", "wan22_14b": "wan22_14b", "wan22_5b": "wan22_5b"}

# The weight quantisation each example or preset uses with `quantize: true`. The accuracy-recovery adapter after
# the `|` was trained on Wan 2.2 T2V-A14B's own weights, so the other bases take the default qfloat8.
QTYPE: dict[str, str] = {
    "wan21_14b": "qfloat8",
    "wan22_14b": "uint4|ostris/accuracy_recovery_adapters/wan22_14b_t2i_torchao_uint4.safetensors",
    "wan22_5b": "qfloat8",
}
QTYPE_TE = "qfloat8"

# The timestep distribution each example or preset trains with (wan21: sigmoid; A14B: linear; 5B: weighted).
TIMESTEP_TYPE: dict[str, str] = {"wan21_14b": "sigmoid", "wan22_14b": "linear", "wan22_5b": "weighted"}

# AI Toolkit splits the A14B experts at this ratio of the timesteps (`boundary_ratio_t2v` in wan22_14b_model.py)
# and has no setting for it. Its examples train `ai-toolkit/Wan2.2-T2V-A14B-Diffusers-bf16`, a bf16 copy of
# Wan-AI/Wan2.2-T2V-A14B-Diffusers; we name the profile's own source.
A14B_BOUNDARY_RATIO = 0.875

# The dtype names AI Toolkit's examples write (its get_torch_dtype reads both spellings).
DTYPE: dict[str, str] = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}

# Outside the face still trains, at a tenth of the weight: AI Toolkit's UI default, and our trainer's MASK_FLOOR.
MASK_MIN_VALUE = 0.1

# The job as AI Toolkit read it, written into `<training_folder>/<name>/` before training.
TRAINING_CONFIG = "config.yaml"
# A sample AI Toolkit saves: `<ms since epoch>__<9-digit step>_<prompt index>.png` (with `format: png`).
SAMPLE_FILE = re.compile(r"^(?P<time>\d+)__(?P<step>\d{9})_(?P<index>\d+)\.png$")


class AiToolkitCannotTrain(InvalidInput):
    """A job AI Toolkit would refuse or train otherwise than asked."""


def aitoolkit_config(
    job: TrainJob, dataset_folder: str, masks_folder: str | None, training_folder: str
) -> dict[str, Any]:
    """The AI Toolkit job config that trains `job` on the pod's folders, as its `run.py` reads it."""
    cfg, base = job.config, job.config.base
    source = job.model.source
    if source.startswith("tiny:"):
        raise AiToolkitCannotTrain(
            f"AI Toolkit cannot train {source!r}: it loads only real Wan checkpoints, not our tiny random-weight "
            "twins; use the native trainer for the tiny profile"
        )
    if job.model.revision is not None:
        raise AiToolkitCannotTrain(
            f"AI Toolkit has no setting for a model revision ({job.model.revision!r}) and would load the newest; "
            "download that revision into a folder and name the folder as the source"
        )
    if cfg.stop_when_flat is not None:
        raise AiToolkitCannotTrain(
            "AI Toolkit cannot stop on the identity score of its samples (train.stop_when_flat); use the native trainer"
        )
    if base == "wan22_14b" and cfg.boundary_ratio != A14B_BOUNDARY_RATIO:
        raise AiToolkitCannotTrain(
            f"AI Toolkit splits Wan 2.2 A14B's experts at {A14B_BOUNDARY_RATIO} and has no setting for it; "
            f"boundary_ratio={cfg.boundary_ratio} needs the native trainer"
        )
    # AI Toolkit trains on every image under the dataset folder, and writes samples into the training folder.
    for label, folder in (("the masks folder", masks_folder), ("the training folder", training_folder)):
        if folder is not None and PurePosixPath(folder).is_relative_to(dataset_folder):
            raise AiToolkitCannotTrain(
                f"{label} {folder} is inside the dataset folder {dataset_folder}: AI Toolkit would train on its images"
            )

    dataset: dict[str, Any] = {
        "folder_path": dataset_folder,
        "caption_ext": "txt",
        "caption_dropout_rate": cfg.caption_dropout,
        "cache_latents_to_disk": True,
        "num_frames": 1,
        # AI Toolkit's resolution is the side of a square of the same area (a bucket keeps the image's aspect), so
        # a non-square image trains with a long side above it: a 2:3 portrait at 1024 becomes 832x1248.
        "resolution": sorted(cfg.resolutions),
    }
    if cfg.masks and masks_folder is not None:
        dataset |= {"mask_path": masks_folder, "mask_min_value": MASK_MIN_VALUE}

    train: dict[str, Any] = {
        "batch_size": 1,
        "steps": cfg.steps,
        "gradient_accumulation": 1,
        "train_unet": True,
        "train_text_encoder": False,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "noise_scheduler": "flowmatch",
        "timestep_type": TIMESTEP_TYPE[base],
        "optimizer": cfg.optimizer,
        "lr": cfg.learning_rate,
        "optimizer_params": {"weight_decay": 1e-4},
        # The base model's samples at step 0 are not a checkpoint's: TrainJob.sample_steps has no step 0.
        "skip_first_sample": True,
        "dtype": DTYPE[job.dtype],
        # Every caption is encoded once and the text encoder unloaded. The trigger is not substituted into cached
        # captions, and no trigger_word is set: our captions and prompts hold the trigger literally, and with a
        # trigger_word a dropped caption would become the trigger instead of the empty prompt.
        "cache_text_embeddings": True,
    }

    model: dict[str, Any] = {"name_or_path": source, "arch": ARCH[base], "quantize": cfg.quantize}
    if cfg.quantize:
        model |= {"qtype": QTYPE[base], "quantize_te": True, "qtype_te": QTYPE_TE}
    model["low_vram"] = cfg.low_vram
    if base == "wan22_14b":
        train["switch_boundary_every"] = cfg.switch_boundary_every
        model["model_kwargs"] = {f"train_{expert}": expert in cfg.experts for expert in EXPERTS}

    prompts = [render_template(template, trigger=job.trigger) for template in cfg.sample_prompts]
    config = {
        "job": "extension",
        "config": {
            "name": job.name,
            "process": [
                {
                    "type": "sd_trainer",
                    "training_folder": training_folder,
                    "device": job.device,
                    "training_seed": cfg.seed,
                    "network": {"type": "lora", "linear": cfg.rank, "linear_alpha": cfg.lora_alpha},
                    "save": {
                        "dtype": "float16",
                        "save_every": cfg.checkpoint_every,
                        "max_step_saves_to_keep": cfg.checkpoint_count,
                    },
                    "datasets": [dataset],
                    "train": train,
                    "model": model,
                    "sample": {
                        "sampler": "flowmatch",
                        "sample_every": cfg.sample_interval,
                        "sample_start_step": 0,
                        "width": cfg.size,
                        "height": cfg.size,
                        "num_frames": 1,
                        # Unused for one frame; the examples' value.
                        "fps": 16,
                        # Lossless, as the best checkpoint is judged on faces (AI Toolkit's default is jpg).
                        "format": "png",
                        "prompts": prompts,
                        "neg": "",
                        # walk_seed: prompt i samples with seed + i at every step, as our trainer does.
                        "seed": cfg.seed,
                        "walk_seed": True,
                        "guidance_scale": cfg.sample_guidance_scale,
                        "sample_steps": cfg.sample_steps,
                    },
                }
            ],
        },
        # The examples write "[name]"; AI Toolkit substitutes it through a JSON dump, which a quote in a name breaks.
        "meta": {"name": job.name, "version": "1.0"},
    }
    placeholders = sorted({text for text in _strings(config) if "${" in text})
    if placeholders:
        # run.py replaces ${VAR} in the YAML file with the pod's environment: it fails, or leaks a secret.
        raise AiToolkitCannotTrain(
            f"AI Toolkit would read ${{...}} as an environment variable in: {', '.join(placeholders)}"
        )
    return config


def aitoolkit_yaml(job: TrainJob, dataset_folder: str, masks_folder: str | None, training_folder: str) -> str:
    """`aitoolkit_config` as the YAML text of AI Toolkit's job file, keys in its examples' order."""
    return yaml.safe_dump(
        aitoolkit_config(job, dataset_folder, masks_folder, training_folder), sort_keys=False, allow_unicode=True
    )


def aitoolkit_checkpoint_filename(job: TrainJob, step: int, expert: Expert | None = None) -> str:
    """The file AI Toolkit saves the LoRA at `step` in: `TrainJob.checkpoint_filename`, unnumbered at the last step."""
    stem = job.name if step == job.config.steps else f"{job.name}_{step:09d}"
    suffix = f"_{expert}" if expert and job.config.base == "wan22_14b" else ""
    return f"{stem}{suffix}.safetensors"


def aitoolkit_checkpoint_names(job: TrainJob) -> dict[int, tuple[str, ...]]:
    """Every step AI Toolkit saves at (`TrainJob.checkpoint_steps`) and the files of that save."""
    experts = job.config.trained_experts if job.config.base == "wan22_14b" else (None,)
    return {
        step: tuple(aitoolkit_checkpoint_filename(job, step, expert) for expert in experts)
        for step in job.checkpoint_steps()
    }


def _strings(value: Any) -> list[str]:
    """Every string in a nested config, keys and values."""
    if isinstance(value, dict):
        return [text for key, item in value.items() for text in (*_strings(key), *_strings(item))]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []
