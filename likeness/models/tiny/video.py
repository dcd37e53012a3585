"""The tiny twins of the Wan roles: the video model (one transformer, or the A14B's two experts), the animator
(Wan 2.2 I2V-A14B) and the lightx2v 4-step LoRAs of both."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from likeness.models.tiny.parts import seeded, t5_tokenizer


def build_video(folder: Path) -> None:
    _tiny_wan().save_pretrained(folder)


# As in Wan2.2-T2V-A14B-Diffusers: `transformer` denoises timesteps >= 875 of 1000, `transformer_2` the rest.
A14B_BOUNDARY_RATIO = 0.875
# Wan 2.2 I2V-A14B splits its experts later (its diffusers model_index.json).
I2V_BOUNDARY_RATIO = 0.9


def build_video_a14b(folder: Path) -> None:
    """The A14B's layout: the tiny video pipeline with a second expert of the same config and its own weights."""
    _tiny_wan(two_experts=True).save_pretrained(folder)


def _tiny_wan(two_experts: bool = False, image_to_video: bool = False) -> Any:
    """A tiny WanPipeline: Wan 2.1's VAE (z_dim 16, as the 14B models use), UMT5, one transformer or two experts;
    with `image_to_video` a WanImageToVideoPipeline as Wan 2.2 I2V-A14B's (36 input channels, boundary 0.9)."""
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanImageToVideoPipeline,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = t5_tokenizer()
    text_config = UMT5Config(
        vocab_size=len(tokenizer), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip

    def transformer() -> WanTransformer3DModel:
        return WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
            in_channels=36 if image_to_video else 16, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        )  # fmt: skip

    pipeline = WanImageToVideoPipeline if image_to_video else WanPipeline
    return pipeline(
        # As in the Wan-AI diffusers repos (flow_shift 3.0 for 480p, 5.0 for 720p).
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000
        ),
        vae=seeded(1, lambda: AutoencoderKLWan(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        )),
        text_encoder=seeded(2, lambda: UMT5EncoderModel(text_config)),
        tokenizer=tokenizer,
        transformer=seeded(3, transformer),
        transformer_2=seeded(4, transformer) if two_experts else None,
        boundary_ratio=(I2V_BOUNDARY_RATIO if image_to_video else A14B_BOUNDARY_RATIO) if two_experts else None,
    )  # fmt: skip


def build_animator(folder: Path) -> None:
    """Wan 2.2 I2V-A14B's layout: two experts whose input is the noise, the still's latents and a frame mask
    (16 + 16 + 4 channels), split at boundary ratio 0.9, no image encoder."""
    _tiny_wan(two_experts=True, image_to_video=True).save_pretrained(folder)


def build_animator_lightx2v(folder: Path) -> None:
    """lightx2v's I2V A14B 4-step LoRAs' twins: the real files' names and key layout, one per expert."""
    from likeness.models.speed_loras import I2V_A14B_FILES, write_tiny_speed_lora

    pipe = _tiny_wan(two_experts=True, image_to_video=True)
    for seed, (expert, transformer) in enumerate((("high_noise", pipe.transformer), ("low_noise", pipe.transformer_2))):
        write_tiny_speed_lora(transformer, folder / I2V_A14B_FILES[expert], rank=4, seed=31 + seed, scale=1.0)


def build_video_a14b_lightx2v(folder: Path) -> None:
    """The lightx2v 4-step LoRAs' twins for the tiny A14B: the real files' names and key layout, one per expert."""
    from likeness.models.speed_loras import T2V_A14B_FILES, write_tiny_speed_lora

    pipe = _tiny_wan(two_experts=True)
    for seed, (expert, transformer) in enumerate((("high_noise", pipe.transformer), ("low_noise", pipe.transformer_2))):
        write_tiny_speed_lora(transformer, folder / T2V_A14B_FILES[expert], rank=4, seed=21 + seed, scale=1.0)
