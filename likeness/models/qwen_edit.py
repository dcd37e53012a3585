"""Qwen-Image-Edit-2511 (or 2509): the pipeline with configurable condition-image areas, and its loading
with a step-distillation LoRA fused in and the scheduler settings that LoRA was distilled for.

diffusers' `QwenImageEditPlusPipeline` resizes every condition image to the module constants
`VAE_IMAGE_SIZE` (1024*1024 pixels, for the VAE latents) and `CONDITION_IMAGE_SIZE` (384*384,
for the Qwen2.5-VL prompt encoder), whatever the output size. That is right for the real model
and ruinous for a tiny CPU profile (20-50 s a call). `QwenEditPlusPipeline` makes both areas
pipeline config values, `vae_image_area` and `vl_image_area`, defaulting to the diffusers
constants. They are saved in `model_index.json` and can be overridden when loading:

    QwenEditPlusPipeline.from_pretrained(repo, dtype=..., vae_image_area=64 * 64, vl_image_area=56 * 56)

or afterwards with `pipe.register_to_config(vae_image_area=..., vl_image_area=...)`.

It also loads on machines without torchvision, where transformers cannot build the video half
of `Qwen2VLProcessor`: the processor is then assembled from its tokenizer and the PIL image
processor, with no video processor (Likeness never sends video to the edit model).

`load_editor` loads a model folder as production does, and optionally lightx2v's 4-step Lightning LoRA
(loaded through diffusers, which converts its kohya-style keys, then fused, so a step costs what a base
step costs) and the Lightning scheduler settings:

    pipe = load_editor(folder, torch.bfloat16, lora=lightning_file, scheduler={"base_shift": math.log(3), ...})
"""

from __future__ import annotations

import importlib.util
import inspect
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as _edit_plus
from transformers import AutoTokenizer, Qwen2VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

# The areas are module globals read inside diffusers' __call__, so a call swaps them in and
# out; the lock keeps two pipelines with different areas from interleaving in one process.
_AREA_LOCK = threading.Lock()


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` that accepts `video_processor=None` (transformers' class check rejects
    it when torchvision is missing)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)

    def save_pretrained(self, save_directory, **kwargs):
        # Same files as the real repos' processor folder, minus the video processor config.
        self.tokenizer.save_pretrained(save_directory, **kwargs)
        return self.image_processor.save_pretrained(save_directory, **kwargs)


def load_image_only_processor(repo, subfolder: str = "processor", **kwargs) -> ImageOnlyQwen2VLProcessor:
    tokenizer = AutoTokenizer.from_pretrained(repo, subfolder=subfolder, **kwargs)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(repo, subfolder=subfolder, **kwargs)
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)


class QwenEditPlusPipeline(QwenImageEditPlusPipeline):
    def __init__(
        self,
        scheduler,
        vae,
        text_encoder,
        tokenizer,
        processor,
        transformer,
        vae_image_area: int = _edit_plus.VAE_IMAGE_SIZE,
        vl_image_area: int = _edit_plus.CONDITION_IMAGE_SIZE,
    ):
        super().__init__(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
            transformer=transformer,
        )
        self.register_to_config(vae_image_area=vae_image_area, vl_image_area=vl_image_area)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        if "processor" not in kwargs and importlib.util.find_spec("torchvision") is None:
            hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
            kwargs["processor"] = load_image_only_processor(pretrained_model_name_or_path, **hub_kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def __call__(self, *args, **kwargs):
        with _AREA_LOCK:
            saved = _edit_plus.VAE_IMAGE_SIZE, _edit_plus.CONDITION_IMAGE_SIZE
            _edit_plus.VAE_IMAGE_SIZE = self.config.vae_image_area
            _edit_plus.CONDITION_IMAGE_SIZE = self.config.vl_image_area
            try:
                return super().__call__(*args, **kwargs)
            finally:
                _edit_plus.VAE_IMAGE_SIZE, _edit_plus.CONDITION_IMAGE_SIZE = saved


def load_editor(
    path: Path,
    dtype: torch.dtype,
    lora: Path | None = None,
    lora_scale: float = 1.0,
    scheduler: Mapping[str, Any] | None = None,
) -> QwenEditPlusPipeline:
    """The editor in the folder `path`, with the LoRA file `lora` fused at `lora_scale` and `scheduler`'s values
    replacing those of its scheduler config."""
    pipe = QwenEditPlusPipeline.from_pretrained(path, dtype=dtype)
    if lora is not None:
        fuse_lora_file(pipe, lora, lora_scale)
    if scheduler:
        replace_scheduler_config(pipe, scheduler)
    return pipe


def lora_layer_count(path: Path) -> int:
    """How many layers the LoRA file at `path` adapts (read from its header, in either key layout)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as weights:
        return sum(key.endswith((".lora_down.weight", ".lora_A.weight")) for key in weights.keys())


def fuse_lora_file(pipe: QwenImageEditPlusPipeline, path: Path, scale: float = 1.0) -> int:
    """Load the LoRA file at `path` as diffusers loads the published file, check that each of its layers found
    its layer in the transformer, and fuse it at `scale`; returns the number of layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    expected = lora_layer_count(path)
    try:
        pipe.load_lora_weights(path)
    except ValueError as exc:
        # peft refuses a LoRA none of whose layers the transformer has, in words about its own internals.
        raise ValueError(
            f"{path.name}: none of its {expected} LoRA layers match a layer of the editor's transformer; "
            "is it a LoRA for this model?"
        ) from exc
    # diffusers only logs the keys that match no layer; a LoRA for another model must not pass for a small one.
    loaded = sum(isinstance(module, BaseTunerLayer) for module in pipe.transformer.modules())
    if loaded != expected:
        pipe.unload_lora_weights()
        raise ValueError(
            f"{path.name}: {loaded} of its {expected} LoRA layers match a layer of the editor's transformer; "
            "is it a LoRA for this model?"
        )
    pipe.fuse_lora(lora_scale=scale)
    # The fused weights stay; the LoRA layers go, so a denoising step costs what a base step costs.
    pipe.unload_lora_weights()
    return expected


def replace_scheduler_config(pipe: QwenImageEditPlusPipeline, values: Mapping[str, Any]) -> None:
    """Give `pipe` a FlowMatchEulerDiscreteScheduler: its scheduler's config with `values` on top."""
    known = inspect.signature(FlowMatchEulerDiscreteScheduler.__init__).parameters.keys() - {"self"}
    unknown = sorted(values.keys() - known)
    if unknown:
        raise ValueError(
            f"unknown FlowMatchEulerDiscreteScheduler setting {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **values)
