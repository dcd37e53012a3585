"""Qwen-Image-Edit-2509 pipeline with configurable condition-image areas.

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
"""

from __future__ import annotations

import importlib.util
import threading

from diffusers import QwenImageEditPlusPipeline
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
