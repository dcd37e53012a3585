"""Qwen3-VL's processor on machines without torchvision.

transformers builds `Qwen3VLProcessor` with a video processor that needs torchvision, so on a machine
without it `AutoProcessor.from_pretrained` fails for every Qwen3-VL repo. Likeness only sends images:
there the processor is assembled from the repo's tokenizer, its image settings read by the PIL image
processor, and its chat template, with no video processor. Where torchvision is installed, the repo's
own processor loads as usual.

    processor = load_qwen3_vl_processor(Path("models/Qwen3-VL-8B-Instruct"))
    inputs = processor(text=[chat], images=[image], return_tensors="pt")
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, ProcessorMixin, Qwen3VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """`Qwen3VLProcessor` that accepts `video_processor=None` (its class check rejects None)."""

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return super().check_argument_for_proper_class(argument_name, argument)


def load_qwen3_vl_processor(path: Path) -> ProcessorMixin:
    """The processor of the Qwen3-VL repo folder at `path`; image-only where torchvision is missing."""
    if importlib.util.find_spec("torchvision") is not None:
        return AutoProcessor.from_pretrained(path)
    # The chat template may be in chat_template.jinja or the older chat_template.json: the processor's
    # own reader knows both.
    processor_dict, _ = Qwen3VLProcessor.get_processor_dict(path)
    return ImageOnlyQwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorPil.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        video_processor=None,
        chat_template=processor_dict.get("chat_template"),
    )
