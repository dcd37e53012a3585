"""FLOPs of the real-size Wan transformers, counted on PyTorch's `meta` device: no weights, no GPU.

The configurations are read without torch (the write checks size LoRA checkpoints from them); counting imports it.

The published transformer configurations are kept here with their sources; one evaluation at a given latent shape
is counted with `torch.utils.flop_counter.FlopCounterMode`, as every later cost estimate builds on.

    forward, backward = count_evaluation(meta_transformer("wan22_14b"), latent_shape("wan22_14b", 81, 720, 1280))
"""

from __future__ import annotations

import warnings
from typing import Any

# transformer/config.json of Wan-AI/Wan2.1-T2V-14B-Diffusers (each expert of Wan-AI/Wan2.2-T2V-A14B-Diffusers has
# the same), and of Wan-AI/Wan2.2-TI2V-5B-Diffusers.
_COMMON: dict[str, Any] = {
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "freq_dim": 256,
    "patch_size": (1, 2, 2),
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
}
WAN_CONFIGS: dict[str, dict[str, Any]] = {
    "wan21_14b": {**_COMMON, "ffn_dim": 13824, "in_channels": 16, "num_attention_heads": 40, "num_layers": 40,
                  "out_channels": 16},
    "wan22_14b": {**_COMMON, "ffn_dim": 13824, "in_channels": 16, "num_attention_heads": 40, "num_layers": 40,
                  "out_channels": 16},
    "wan22_5b": {**_COMMON, "ffn_dim": 14336, "in_channels": 48, "num_attention_heads": 24, "num_layers": 30,
                 "out_channels": 48},
}  # fmt: skip
# Pixels per latent pixel: Wan 2.1's VAE (also the A14B's) and Wan 2.2's 5B VAE; both pack 4 frames in one.
VAE_SCALE = {"wan21_14b": 8, "wan22_14b": 8, "wan22_5b": 16}
TEXT_TOKENS = 512  # UMT5's sequence, padded


def meta_transformer(base: str, lora_rank: int | None = None, lora_targets: tuple[str, ...] = ()) -> Any:
    """The real-size transformer of `base` on the meta device, frozen; with a peft LoRA of `lora_rank` on
    `lora_targets` when given."""
    import torch
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig

    with warnings.catch_warnings(), torch.device("meta"):
        # Casting warns that some modules are kept in float32 on load; nothing is loaded here.
        warnings.simplefilter("ignore")
        model = WanTransformer3DModel(**WAN_CONFIGS[base]).to(torch.bfloat16)
    model.requires_grad_(False)
    if lora_rank:
        model.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(lora_targets)))
    return model


def latent_shape(base: str, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
    """The latent a `frames`-frame `height`x`width` clip is denoised as (batch 1)."""
    scale = VAE_SCALE[base]
    return 1, WAN_CONFIGS[base]["in_channels"], (frames - 1) // 4 + 1, height // scale, width // scale


def evaluation_inputs(shape: tuple[int, ...]) -> dict[str, Any]:
    """A transformer evaluation's inputs on the meta device: a latent of `shape`, the timestep and UMT5's text."""
    import torch

    return {
        "hidden_states": torch.empty(shape, device="meta", dtype=torch.bfloat16),
        "timestep": torch.zeros(1, device="meta", dtype=torch.long),
        "encoder_hidden_states": torch.empty(1, TEXT_TOKENS, 4096, device="meta", dtype=torch.bfloat16),
    }


def count_evaluation(model: Any, shape: tuple[int, ...], backward: bool = False) -> tuple[int, int]:
    """(forward, backward) FLOPs of one transformer evaluation on a latent of `shape`; backward 0 unless asked."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as forward:
        out = model(**evaluation_inputs(shape), return_dict=False)[0]
    if not backward:
        return forward.get_total_flops(), 0
    with FlopCounterMode(display=False) as backward_pass:
        out.float().square().mean().backward()
    return forward.get_total_flops(), backward_pass.get_total_flops()
