"""The tiny twins of USO's files (bytedance-research/USO) for the tiny refiner, and of the SigLIP image encoder
(google/siglip-so400m-patch14-384) its projector reads."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from likeness.models.tiny.parts import seeded

# The tiny refiner's transformer (build_refiner): 2 heads of 16, one double and one single block, MLP ratio 4.
_HIDDEN, _MLP_HIDDEN, _DOUBLE_BLOCKS, _SINGLE_BLOCKS = 32, 128, 1, 1
# The tiny SigLIP: 28 px images in 7 px patches (16 tokens), 16 wide; 20 layers, so hidden_states[-20] exists.
_SIGLIP_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=20, num_attention_heads=2, image_size=28, patch_size=7
)  # fmt: skip
_SIGLIP_TOKENS = (28 // 7) ** 2
_STYLE_TOKENS = 4
USO_FOLDER = "uso_flux_v1.0"


def build_uso(folder: Path) -> None:
    """USO's DiT LoRA and projector in the published files' names, key layout and dtype (bfloat16, no metadata).

    The real LoRA has rank 128 on FLUX.1-dev's 19 double and 38 single blocks (hidden 3072, single-block proj
    in_features 3072 + 12288); the real projector maps 729 SigLIP tokens of width 1152 to 64 style tokens per level,
    3072 wide. Here: rank 4 on the tiny refiner, 16 SigLIP tokens of width 16 to 4 style tokens, 32 wide."""
    from safetensors.torch import save_file

    (folder / USO_FOLDER).mkdir(parents=True)
    generator = torch.Generator().manual_seed(7)

    def lora(name: str, in_features: int, out_features: int, rank: int = 4) -> dict[str, torch.Tensor]:
        down = torch.randn(rank, in_features, generator=generator) / in_features**0.5
        # Strong enough that the fused LoRA moves the tiny refiner's output visibly.
        up = torch.randn(out_features, rank, generator=generator)
        return {f"{name}.down.weight": down.to(torch.bfloat16), f"{name}.up.weight": up.to(torch.bfloat16)}

    tensors = {}
    for block in range(_DOUBLE_BLOCKS):
        prefix = f"double_blocks.{block}.processor"
        for stream in (1, 2):  # 1: the image stream, 2: the text stream
            tensors |= lora(f"{prefix}.qkv_lora{stream}", _HIDDEN, 3 * _HIDDEN)
            tensors |= lora(f"{prefix}.proj_lora{stream}", _HIDDEN, _HIDDEN)
    for block in range(_SINGLE_BLOCKS):
        prefix = f"single_blocks.{block}.processor"
        tensors |= lora(f"{prefix}.qkv_lora", _HIDDEN, 3 * _HIDDEN)
        tensors |= lora(f"{prefix}.proj_lora", _HIDDEN + _MLP_HIDDEN, _HIDDEN)
    save_file(tensors, folder / USO_FOLDER / "dit_lora.safetensors")

    projector = {}
    hidden_dim = _SIGLIP_VISION["hidden_size"]
    for level in ("high", "mid", "low"):
        shapes = {
            "embedding_linear.0.weight": (_STYLE_TOKENS, _SIGLIP_TOKENS), "embedding_linear.0.bias": (_STYLE_TOKENS,),
            "layer_norm.weight": (hidden_dim,), "layer_norm.bias": (hidden_dim,),
            "projection.weight": (_HIDDEN, hidden_dim), "projection.bias": (_HIDDEN,),
        }  # fmt: skip
        for name, shape in shapes.items():
            # Random LayerNorm weights too (not ones and zeros), so that a swapped or skipped one shows.
            value = torch.randn(shape, generator=generator) / shape[-1] ** 0.5
            if name == "layer_norm.weight":
                value = value + 1
            projector[f"feature_embedder.{level}_{name}"] = value.to(torch.bfloat16)
    save_file(projector, folder / USO_FOLDER / "projector.safetensors")


def build_siglip(folder: Path) -> None:
    """google/siglip-so400m-patch14-384's layout: a whole SigLIP model (`vision_model.*` and `text_model.*` weights,
    config of model_type "siglip") and the image processor's config; USO reads only the vision tower, which
    `SiglipVisionModel.from_pretrained` takes from it. No tokenizer: nothing here reads text."""
    from transformers import SiglipConfig, SiglipModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    config = SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=1, bos_token_id=None,
                         eos_token_id=1),
        vision_config=_SIGLIP_VISION,
    )  # fmt: skip
    seeded(1, lambda: SiglipModel(config)).save_pretrained(folder)
    size = _SIGLIP_VISION["image_size"]
    processor = SiglipImageProcessorPil(
        size={"height": size, "width": size}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor.save_pretrained(folder)
    # Declare the class the real repo declares.
    config_path = folder / "preprocessor_config.json"
    values = json.loads(config_path.read_text())
    values["image_processor_type"] = "SiglipImageProcessor"
    config_path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
