"""The tiny twins of the image roles: the editor (Qwen-Image-Edit-2511) and its Lightning LoRA, the refiners
(FLUX.1 img2img, FLUX.2 klein), the upscaler (ESRGAN)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from likeness.models.tiny.parts import clip_tokenizer, qwen3_tokenizer, qwen_tokenizer, seeded, t5_tokenizer

# Qwen-Image's transformer layout at toy width, with Qwen-Image-Edit-2511's `zero_cond_t`: the condition images'
# tokens are modulated at timestep 0 rather than at the denoising step.
_EDITOR_TRANSFORMER = dict(
    patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
    joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4), zero_cond_t=True,
)  # fmt: skip

# The layers of every transformer block that lightx2v's Qwen-Image(-Edit) Lightning LoRAs adapt.
LIGHTNING_TARGETS = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_out.0",
    "attn.to_add_out", "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
)  # fmt: skip
LIGHTNING_FILE = "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors"


def build_editor(folder: Path) -> None:
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from likeness.models.qwen_edit import ImageOnlyQwen2VLProcessor, QwenEditPlusPipeline

    tokenizer = qwen_tokenizer()
    token_id = tokenizer.convert_tokens_to_ids
    text_encoder_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, rope_theta=1e6,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            bos_token_id=None, eos_token_id=token_id("<|im_end|>"), pad_token_id=token_id("<|endoftext|>"),
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16,
                           fullatt_block_indexes=[1]),
        vocab_size=len(tokenizer),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
    )  # fmt: skip
    # The VL encoder sees at most 2x2 merged patches of 28 px: a handful of image tokens.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56)
    pipe = QwenEditPlusPipeline(
        # Qwen-Image's own scheduler config; the Lightning LoRA's authors replace part of it.
        scheduler=FlowMatchEulerDiscreteScheduler(
            base_shift=0.5, max_shift=0.9, max_image_seq_len=8192, shift_terminal=0.02, use_dynamic_shifting=True,
        ),
        vae=seeded(1, lambda: AutoencoderKLQwenImage(
            base_dim=8, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
            latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
        )),
        text_encoder=seeded(2, lambda: Qwen2_5_VLForConditionalGeneration(text_encoder_config)),
        tokenizer=tokenizer,
        processor=ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None),
        transformer=seeded(3, lambda: QwenImageTransformer2DModel(**_EDITOR_TRANSFORMER)),
        vae_image_area=64 * 64,
        vl_image_area=56 * 56,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    # Declare the classes the real repo declares, so the folder reads like Qwen-Image-Edit-2511.
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def build_editor_lightning(folder: Path) -> None:
    """The 4-step Lightning LoRA's twin for the tiny editor: the real file's name, key layout and alpha / rank."""
    from diffusers import QwenImageTransformer2DModel
    from safetensors.torch import save_file

    # The real file holds, for each of the 60 blocks and each target layer, kohya-style `lora_down` and `lora_up`
    # weights of rank 64 and a scalar `alpha` of 8, all bfloat16, no prefix and no metadata (that layout alone
    # gives its exact size, 849,608,296 bytes); diffusers converts it on load. Here: rank 8, alpha 1.
    rank, alpha = 8, 1.0
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(**_EDITOR_TRANSFORMER)  # for the layers' shapes only
    generator = torch.Generator().manual_seed(5)
    tensors = {}
    for block in range(len(transformer.transformer_blocks)):
        for target in LIGHTNING_TARGETS:
            name = f"transformer_blocks.{block}.{target}"
            layer = transformer.get_submodule(name)
            down = torch.randn(rank, layer.in_features, generator=generator) / layer.in_features**0.5
            tensors[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
            # Strong enough to move the tiny editor's output about as much as a change of seed does.
            up = torch.randn(layer.out_features, rank, generator=generator) * 8
            tensors[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
            tensors[f"{name}.alpha"] = torch.tensor(alpha, dtype=torch.bfloat16)
    save_file(tensors, folder / LIGHTNING_FILE)


def build_refiner(folder: Path) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer()
    clip_config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        projection_dim=32, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    t5_config = T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_ff=37, d_kv=8, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", pad_token_id=tokenizer_2.pad_token_id, eos_token_id=tokenizer_2.eos_token_id,
    )  # fmt: skip
    pipe = FluxImg2ImgPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096
        ),
        # Four blocks: the real 8x spatial downsampling, so Flux's size rules are the real ones.
        vae=seeded(1, lambda: AutoencoderKL(
            in_channels=3, out_channels=3, block_out_channels=(8, 8, 8, 8),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=128,
            use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
        )),
        text_encoder=seeded(2, lambda: CLIPTextModel(clip_config)),
        tokenizer=tokenizer,
        text_encoder_2=seeded(3, lambda: T5EncoderModel(t5_config)),
        tokenizer_2=tokenizer_2,
        transformer=seeded(4, lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=True,
        )),
    )  # fmt: skip
    pipe.save_pretrained(folder)


def build_refiner_klein(folder: Path) -> None:
    """FLUX.2 klein 4B's layout (black-forest-labs/FLUX.2-klein-4B): Qwen3 text encoder, FLUX.2 VAE and transformer."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen3_tokenizer()
    # 28 layers: the pipeline reads hidden states 9, 18 and 27 (stacked, so the transformer sees 3 x 16 wide).
    text_config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=28, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )  # fmt: skip
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential"),
        # Four blocks: the real 8x spatial downsampling, so the size rules are the real ones.
        vae=seeded(1, lambda: AutoencoderKLFlux2(
            block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4,
            sample_size=128, use_quant_conv=False, use_post_quant_conv=False,
        )),
        text_encoder=seeded(2, lambda: Qwen3ForCausalLM(text_config)),
        tokenizer=tokenizer,
        transformer=seeded(3, lambda: Flux2Transformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=48, timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4],
            guidance_embeds=False,
        )),
        is_distilled=True,
    )  # fmt: skip
    pipe.save_pretrained(folder)


def build_upscaler(folder: Path) -> None:
    from safetensors.torch import save_file

    from likeness.models.spandrel_compat import import_spandrel

    import_spandrel()  # spandrel's architecture modules need its torchvision workaround
    from spandrel.architectures.ESRGAN import ESRGAN

    model = seeded(1, lambda: ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4))
    save_file({name: t.contiguous() for name, t in model.state_dict().items()}, folder / "model.safetensors")
    config = {"architecture": "ESRGAN (RRDBNet)", "scale": 4, "num_filters": 8, "num_blocks": 1,
              "loader": "spandrel.ModelLoader().load_from_file('model.safetensors')"}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
