"""FLOPs of one evaluation of each production model part, counted on PyTorch's `meta` device: no weights, no GPU.

Each part is built at its real size from its published configuration (kept here, with the repo file it comes from)
with the classes production loads, and one evaluation is run under `torch.utils.flop_counter.FlopCounterMode`. The
count is twice the multiply-adds of matrix products and convolutions, attention included; normalisations,
activations and other elementwise work are not counted. Attention is counted dense: the causal prefills of the two
Qwen language models (the editor's prompt, the captioner's) do about half of their attention FLOPs on a GPU.

The parts (`role.part`, roles as production.yaml names them):

    editor.transformer       Qwen-Image-Edit-2511's 20B MMDiT: one denoising pass over the output and its conditions
    editor.text_encoder      its Qwen2.5-VL-7B: the prompt with each condition image (once per edit without CFG)
    editor.vae_encode        its VAE encoding one condition image
    editor.vae_decode        its VAE decoding the output
    refiner.transformer      FLUX.1-dev's 12B transformer: one img2img pass over one tile (and USO's subject and
                             style tokens)
    refiner.image_encoder    USO's SigLIP so400m vision tower and its projector on one style reference
    refiner.text_encoder     CLIP-L on its 77 tokens
    refiner.text_encoder_2   T5-XXL's encoder on its 512 tokens
    refiner.vae_encode       FLUX's VAE encoding one tile
    refiner.vae_decode       FLUX's VAE decoding one tile
    upscaler                 4x-UltraSharp (ESRGAN RRDBNet) on one tile
    captioner                Qwen3-VL-8B: one caption (vision tower, prefill, then one decode step per further token)
    video.transformer        one expert of Wan 2.2 T2V-A14B (both have one config): one pass over a clip
    video.text_encoder       UMT5-XXL's encoder on Wan's 512 tokens (the A14B's and the 5B's)
    video.vae_encode         Wan 2.1's VAE (the A14B's) encoding a clip (a training image is a one-frame clip)
    video.vae_decode         Wan 2.1's VAE (the A14B's) decoding the clip
    video-5b.transformer     Wan 2.2 TI2V-5B (production-5b's video model): one pass over a clip
    video-5b.vae_encode      Wan 2.2's VAE (the 5B's) encoding a clip
    video-5b.vae_decode      Wan 2.2's VAE (the 5B's) decoding the clip
    identity                 dlib's ResNet face descriptor on one 150x150 face chip (dlib, not torch: a replica)

Each evaluation is counted twice over: its FLOPs and the peak bytes of its activations (`likeness.estimate.counting`).
Counts are kept for the process, and between processes in a file once `keep_counts_in(path)` names one.

Shapes default to the production profile's (production-5b's for video-5b); any can be given:

    evaluation_flops("editor.transformer")                                   # 1024x1024 with one condition
    evaluation_flops("video.transformer", frames=81, width=1280, height=720)
    evaluation("video.transformer").activation_bytes

This module is long because it is a table: one published configuration and one builder per part, read side by side;
split, the parts would only be harder to compare.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from likeness.estimate.counts import Measure
from likeness.models import wan_flops

if TYPE_CHECKING:
    from torch import nn

    from likeness.estimate.counts import CountFile

# transformer/config.json of Qwen/Qwen-Image-Edit-2511 (its `pooled_projection_dim`, 768, is no argument of the
# diffusers class and shapes nothing).
QWEN_IMAGE_EDIT_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128, "axes_dims_rope": (16, 56, 56), "guidance_embeds": False, "in_channels": 64,
    "joint_attention_dim": 3584, "num_attention_heads": 24, "num_layers": 60, "out_channels": 16, "patch_size": 2,
    "zero_cond_t": True,
}  # fmt: skip
# vae/config.json of Qwen/Qwen-Image-Edit-2511 (AutoencoderKLQwenImage; latents_mean/std left out, they shape nothing).
QWEN_IMAGE_VAE: dict[str, Any] = {
    "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "z_dim": 16,
}  # fmt: skip
# text_encoder/config.json of Qwen/Qwen-Image-Edit-2511 (Qwen2.5-VL-7B-Instruct's): the file has the language
# model's values at its top level, transformers 5 takes them as `text_config`. Token ids left out: they shape nothing.
QWEN25_VL_7B: dict[str, Any] = {
    "text_config": {
        "hidden_act": "silu", "hidden_size": 3584, "intermediate_size": 18944, "max_position_embeddings": 128000,
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False, "vocab_size": 152064,
    },
    "vision_config": {
        "depth": 32, "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "hidden_size": 1280,
        "in_chans": 3, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
        "spatial_merge_size": 2, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 112,
    },
    "tie_word_embeddings": False, "vocab_size": 152064,
}  # fmt: skip
# processor/preprocessor_config.json of Qwen/Qwen-Image-Edit-2511 (Qwen2-VL's image processor).
QWEN_EDIT_PROCESSOR = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136,
                       "max_pixels": 12845056}  # fmt: skip
# QwenImageEditPlusPipeline's prompt: it encodes a 64-token system prompt, then drops it (its
# prompt_template_encode_start_idx); each condition image comes as "Picture N: " and its image tokens between vision
# markers, about 7 tokens around them.
EDIT_SYSTEM_TOKENS = 64
PICTURE_TOKENS = 7
# The catalogue's shot prompts are 56 words on average (80 at most): about 75 Qwen tokens, and the chat template's
# closing "<|im_end|>\n<|im_start|>assistant\n". An assumption (no tokenizer here); it moves an edit's cost by <1%.
EDIT_PROMPT_TOKENS = 80

# transformer/config.json of black-forest-labs/FLUX.1-dev.
FLUX_DEV_TRANSFORMER: dict[str, Any] = {
    "attention_head_dim": 128, "axes_dims_rope": (16, 56, 56), "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}  # fmt: skip
FLUX_DEV_TRANSFORMER_HIDDEN = 24 * 128
# vae/config.json of black-forest-labs/FLUX.1-dev (AutoencoderKL, 16 latent channels).
FLUX_VAE: dict[str, Any] = {
    "act_fn": "silu", "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "force_upcast": True, "in_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
    "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "use_post_quant_conv": False, "use_quant_conv": False,
}  # fmt: skip
# text_encoder/config.json of black-forest-labs/FLUX.1-dev (CLIP ViT-L/14's text tower).
CLIP_L: dict[str, Any] = {
    "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
    "layer_norm_eps": 1e-5, "max_position_embeddings": 77, "num_attention_heads": 12, "num_hidden_layers": 12,
    "pad_token_id": 1, "projection_dim": 768, "vocab_size": 49408,
}  # fmt: skip
# text_encoder_2/config.json of black-forest-labs/FLUX.1-dev (T5 v1.1 XXL's encoder).
T5_XXL: dict[str, Any] = {
    "d_ff": 10240, "d_kv": 64, "d_model": 4096, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "vocab_size": 32128,
}  # fmt: skip
CLIP_TOKENS, T5_TOKENS = 77, 512  # FluxImg2ImgPipeline pads to these (max_sequence_length 512 for FLUX.1-dev)
# config.json of google/siglip-so400m-patch14-384, its vision_config (USO's image encoder; the text tower never loads).
SIGLIP_SO400M_VISION: dict[str, Any] = {
    "hidden_size": 1152, "image_size": 384, "intermediate_size": 4304, "num_attention_heads": 16,
    "num_hidden_layers": 27, "patch_size": 14,
}  # fmt: skip
# USO's projector (uso/flux/model.py in bytedance/USO): 729 SigLIP tokens of three layers, each to 64 style tokens.
USO_STYLE_TOKENS = 3 * 64

# Kim2091/UltraSharp's 4x-UltraSharp.pth as spandrel reads it: ESRGAN's RRDBNet, 23 blocks of 64 features (growth 32).
ESRGAN_4X_ULTRASHARP: dict[str, Any] = {"in_nc": 3, "out_nc": 3, "num_filters": 64, "num_blocks": 23, "scale": 4}

# config.json of Qwen/Qwen3-VL-8B-Instruct (token ids left out: they shape nothing).
QWEN3_VL_8B: dict[str, Any] = {
    "text_config": {
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "intermediate_size": 12288,
        "max_position_embeddings": 262144, "num_attention_heads": 32, "num_hidden_layers": 36,
        "num_key_value_heads": 8, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [24, 20, 20],
                            "mrope_interleaved": True},
        "vocab_size": 151936,
    },
    "vision_config": {
        "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152,
        "in_channels": 3, "intermediate_size": 4304, "num_heads": 16, "num_position_embeddings": 2304,
        "out_hidden_size": 4096, "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
    "tie_word_embeddings": False,
}  # fmt: skip
# preprocessor_config.json of Qwen/Qwen3-VL-8B-Instruct: size.shortest_edge and size.longest_edge are pixel counts.
QWEN3_VL_PROCESSOR = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 65536,
                      "max_pixels": 16777216}  # fmt: skip
# The captioner's chat: its image between vision markers, likeness.dataset.captions.DEFAULT_PROMPT with the word limit
# (about 70 words) and the chat template: about 100 tokens. An assumption (no tokenizer here).
CAPTION_PROMPT_TOKENS = 100

# vae/config.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers (Wan 2.1's VAE; latents_mean/std left out).
WAN21_VAE: dict[str, Any] = {
    "attn_scales": [], "base_dim": 96, "dim_mult": [1, 2, 4, 4], "dropout": 0.0, "num_res_blocks": 2,
    "temperal_downsample": [False, True, True], "z_dim": 16,
}  # fmt: skip
# text_encoder/config.json of Wan-AI/Wan2.2-T2V-A14B-Diffusers (google/umt5-xxl's encoder; the TI2V-5B has the same).
UMT5_XXL: dict[str, Any] = {
    "d_ff": 10240, "d_kv": 64, "d_model": 4096, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "num_heads": 64, "num_layers": 24, "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False, "vocab_size": 256384,
}  # fmt: skip
# vae/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers (Wan 2.2's own VAE: 16x spatially, 48 latent channels; its
# `clip_output`, false, is no argument of this diffusers' class; latents_mean/std left out).
WAN22_VAE: dict[str, Any] = {
    "attn_scales": [], "base_dim": 160, "decoder_base_dim": 256, "dim_mult": [1, 2, 4, 4],
    "dropout": 0.0, "in_channels": 12, "is_residual": True, "num_res_blocks": 2, "out_channels": 12, "patch_size": 2,
    "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True], "z_dim": 48,
}  # fmt: skip

# dlib's dlib_face_recognition_resnet_model_v1 (`anet_type` in dlib's tools/python/src/face_recognition.cpp and
# examples/dnn_face_recognition_ex.cpp): a 150x150 RGB chip, con 7x7/2 of 32 filters, max_pool 3x3/2, then residual
# levels of (filters, blocks) below, the first block of each but the first downsampling by 2, average over
# everything, fc of 128 without bias. 29 convolutions: 541,708,288 FLOPs a face (the tests work them out by hand).
# One descriptor per face (num_jitters 1, dlib's default); the face detector (HOG) and landmarks are not counted.
DLIB_FACE_CHIP = 150
DLIB_LEVELS = ((32, 3), (64, 4), (128, 3), (256, 3), (256, 1))


def _build_qwen_image_transformer() -> Any:
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(**QWEN_IMAGE_EDIT_TRANSFORMER)


def _build_qwen_image_vae() -> Any:
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(**QWEN_IMAGE_VAE)


def _build_qwen25_vl() -> Any:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**QWEN25_VL_7B))


def _build_flux_transformer() -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(**FLUX_DEV_TRANSFORMER)


def _build_flux_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**FLUX_VAE)


def _build_clip_l() -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**CLIP_L))


def _build_uso_image_encoder() -> Any:
    from torch import nn
    from transformers import SiglipVisionConfig, SiglipVisionModel

    from likeness.models.uso import StyleProjector

    vision = SIGLIP_SO400M_VISION
    tokens = (vision["image_size"] // vision["patch_size"]) ** 2
    projector = StyleProjector(tokens, USO_STYLE_TOKENS // 3, vision["hidden_size"], FLUX_DEV_TRANSFORMER_HIDDEN)
    return nn.ModuleDict({"encoder": SiglipVisionModel(SiglipVisionConfig(**vision)), "projector": projector})


def _build_t5_xxl() -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**T5_XXL))


def _build_esrgan() -> Any:
    from likeness.models.spandrel_compat import import_spandrel

    import_spandrel()  # spandrel's architecture modules need its torchvision stand-in here
    from spandrel.architectures.ESRGAN import ESRGAN

    return ESRGAN(**ESRGAN_4X_ULTRASHARP)


def _build_qwen3_vl() -> Any:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(**QWEN3_VL_8B))


def _build_wan_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN21_VAE)


def _build_umt5_xxl() -> Any:
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(UMT5Config(**UMT5_XXL))


def _build_wan22_vae() -> Any:
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**WAN22_VAE)


def _build_dlib_resnet() -> Any:
    import torch
    from torch import nn

    class Affine(nn.Module):
        """dlib's `affine` layer (its batch norm, folded): a scale and a shift per channel."""

        def __init__(self, channels: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(channels, 1, 1))
            self.beta = nn.Parameter(torch.zeros(channels, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma + self.beta

    class Residual(nn.Module):
        """dlib's `ares` (or `ares_down`): con 3x3, affine, relu, con 3x3, affine, plus the input (2x2-average-pooled
        when downsampling), relu."""

        def __init__(self, inputs: int, filters: int, down: bool) -> None:
            super().__init__()
            # dlib's con pads half the filter at stride 1 and nothing at stride 2 (its template defaults, which the
            # model file's deserialisation checks).
            self.conv1 = nn.Conv2d(inputs, filters, 3, stride=2 if down else 1, padding=0 if down else 1)
            self.affine1 = Affine(filters)
            self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
            self.affine2 = Affine(filters)
            self.skip = nn.AvgPool2d(2, 2) if down else nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.affine2(self.conv2(torch.relu(self.affine1(self.conv1(x)))))
            skip = self.skip(x)
            # dlib's add_prev adds tensors of different sizes by zero-filling each to the larger in every dimension
            # (a downsampling block's 3x3 output plus a 4x4 pooled input is 4x4).
            size = [max(a, b) for a, b in zip(out.shape[1:], skip.shape[1:], strict=True)]
            out, skip = (nn.functional.pad(t, _padding(t.shape[1:], size)) for t in (out, skip))
            return torch.relu(out + skip)

    def _padding(shape: torch.Size, size: list[int]) -> tuple[int, ...]:
        (channels, height, width), (to_channels, to_height, to_width) = shape, size
        return 0, to_width - width, 0, to_height - height, 0, to_channels - channels

    layers: list[nn.Module] = [nn.Conv2d(3, 32, 7, stride=2), Affine(32), nn.ReLU(), nn.MaxPool2d(3, 2)]
    inputs = 32
    for level, (filters, blocks) in enumerate(DLIB_LEVELS):
        for block in range(blocks):
            layers.append(Residual(inputs, filters, down=level > 0 and block == 0))
            inputs = filters
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inputs, 128, bias=False)]
    return nn.Sequential(*layers)


_BUILDERS: dict[str, Callable[[], Any]] = {
    "qwen_image_transformer": _build_qwen_image_transformer,
    "qwen_image_vae": _build_qwen_image_vae,
    "qwen25_vl": _build_qwen25_vl,
    "flux_transformer": _build_flux_transformer,
    "uso_image_encoder": _build_uso_image_encoder,
    "flux_vae": _build_flux_vae,
    "clip_l": _build_clip_l,
    "t5_xxl": _build_t5_xxl,
    "esrgan": _build_esrgan,
    "qwen3_vl": _build_qwen3_vl,
    "wan22_14b": lambda: wan_flops.meta_transformer("wan22_14b"),
    "wan21_vae": _build_wan_vae,
    "wan22_5b": lambda: wan_flops.meta_transformer("wan22_5b"),
    "wan22_vae": _build_wan22_vae,
    "umt5_xxl": _build_umt5_xxl,
    "dlib_resnet": _build_dlib_resnet,
}


# Counting ---------------------------------------------------------------------------------------------------------


def _measure(call: Callable[[], Any]) -> Measure:
    from likeness.estimate.counting import measure

    return measure(call)


def _in_turn(*measures: Measure) -> Measure:
    """Calls made one after another: their FLOPs add, their activations do not overlap."""
    return Measure(
        sum(m.flops for m in measures),
        max(m.activation_bytes for m in measures),
        sum(m.attention_flops for m in measures),
    )


def _grids_on_cpu() -> Any:
    """A dispatch mode for the Qwen vision towers: they read their image grid's values (loops, `.tolist()`), which a
    meta tensor has none of, so the grid stays on the CPU and any CPU tensor that meets a meta one moves to meta."""
    import torch
    from torch.utils import _pytree
    from torch.utils._python_dispatch import TorchDispatchMode

    def to_meta(tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.is_meta else tensor.to("meta")

    class GridsOnCpu(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if any(isinstance(t, torch.Tensor) and t.is_meta for t in _pytree.tree_leaves((args, kwargs))):
                args, kwargs = _pytree.tree_map_only(torch.Tensor, to_meta, (args, kwargs))
            return func(*args, **kwargs)

    return GridsOnCpu()


def _empty(*shape: int) -> Any:
    import torch

    return torch.empty(shape, device="meta", dtype=torch.bfloat16)


def _vision_grid(processor: dict[str, int], width: int, height: int) -> tuple[int, int]:
    """(rows, columns) of patches Qwen's image processor cuts a `width` x `height` image into."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    factor = processor["patch_size"] * processor["merge_size"]
    resized_height, resized_width = smart_resize(
        height, width, factor, min_pixels=processor["min_pixels"], max_pixels=processor["max_pixels"]
    )
    return resized_height // processor["patch_size"], resized_width // processor["patch_size"]


def _vision(model: Any, processor: dict[str, int], grids: list[tuple[int, int]]) -> Measure:
    """One pass of a Qwen VL model's vision tower over images cut into `grids` of patches."""
    import torch

    patch_values = 3 * processor["temporal_patch_size"] * processor["patch_size"] ** 2
    pixels = _empty(sum(rows * columns for rows, columns in grids), patch_values)
    grid_thw = torch.tensor([(1, rows, columns) for rows, columns in grids])

    def run() -> None:
        with _grids_on_cpu():
            model.model.visual(pixels, grid_thw=grid_thw)

    return _measure(run)


def _merged_tokens(processor: dict[str, int], grid: tuple[int, int]) -> int:
    return grid[0] * grid[1] // processor["merge_size"] ** 2


def _language_model(model: Any, tokens: int, logits: int) -> Measure:
    """A Qwen VL language model's prefill of `tokens` embedded tokens, with logits for the last `logits` (0: all)."""
    import torch

    hidden = model.config.text_config.hidden_size
    positions = torch.zeros(3, 1, tokens, dtype=torch.long, device="meta")  # the M-RoPE positions change no FLOP
    return _measure(lambda: model(inputs_embeds=_empty(1, tokens, hidden), position_ids=positions,
                                  logits_to_keep=logits))  # fmt: skip


def condition_size(area: int) -> tuple[int, int]:
    """The (width, height) Qwen-Image-Edit resizes a square condition image of `area` pixels to: its side rounded to
    a multiple of 32, as the pipeline's `calculate_dimensions` does (the tests hold the two equal; importing the
    pipeline to ask it takes seconds)."""
    side = round(math.sqrt(area) / 32) * 32
    return side, side


def _edit_text_tokens(conditions: int, vl_condition_area: int, prompt_tokens: int) -> int:
    """The prompt tokens the editor's transformer sees: per condition its picture's image tokens, then the prompt."""
    picture = _merged_tokens(QWEN_EDIT_PROCESSOR, _vision_grid(QWEN_EDIT_PROCESSOR, *condition_size(vl_condition_area)))
    return conditions * (picture + PICTURE_TOKENS) + prompt_tokens


def _editor_transformer(
    model: Any, width: int, height: int, conditions: int, condition_area: int, vl_condition_area: int,
    prompt_tokens: int,
) -> Measure:  # fmt: skip
    import torch

    # Square conditions: a condition's tokens follow its area, its aspect moves them only by the rounding.
    sizes = [(height, width)] + [condition_size(condition_area)[::-1]] * conditions
    img_shapes = [[(1, h // 16, w // 16) for h, w in sizes]]  # 8x VAE, 2x2 patches
    image_tokens = sum(h * w for _, h, w in img_shapes[0])
    text_tokens = _edit_text_tokens(conditions, vl_condition_area, prompt_tokens)
    config = model.config
    return _measure(lambda: model(
        hidden_states=_empty(1, image_tokens, config.in_channels),
        encoder_hidden_states=_empty(1, text_tokens, config.joint_attention_dim),
        timestep=torch.zeros(1, device="meta"), img_shapes=img_shapes, return_dict=False,
    ))  # fmt: skip


def _editor_text_encoder(model: Any, conditions: int, vl_condition_area: int, prompt_tokens: int) -> Measure:
    grid = _vision_grid(QWEN_EDIT_PROCESSOR, *condition_size(vl_condition_area))
    tokens = EDIT_SYSTEM_TOKENS + _edit_text_tokens(conditions, vl_condition_area, prompt_tokens)
    # The pipeline calls the whole model for its hidden states, so the logits of every token are computed too.
    return _in_turn(_vision(model, QWEN_EDIT_PROCESSOR, [grid] * conditions), _language_model(model, tokens, 0))


def _image_vae_encode(model: Any, width: int, height: int) -> Measure:
    # Qwen-Image's VAE is a video VAE: a still is one frame.
    return _measure(lambda: model.encode(_empty(1, 3, 1, height, width)))


def _image_vae_decode(model: Any, width: int, height: int) -> Measure:
    return _measure(lambda: model.decode(_empty(1, model.config.z_dim, 1, height // 8, width // 8)))


def _refiner_transformer(
    model: Any, width: int, height: int, subject_tokens: int = 0, style_tokens: int = 0
) -> Measure:
    import torch

    # 8x VAE, 2x2 latent patches packed into 64 channels; USO's subject tokens follow the image's.
    tokens = (height // 16) * (width // 16) + subject_tokens
    # USO's style tokens join the text's after its embedder: counted through it, 0.02% of an evaluation more.
    text_tokens = T5_TOKENS + style_tokens
    config = model.config
    return _measure(lambda: model(
        hidden_states=_empty(1, tokens, config.in_channels),
        encoder_hidden_states=_empty(1, text_tokens, config.joint_attention_dim),
        pooled_projections=_empty(1, config.pooled_projection_dim),
        timestep=torch.zeros(1, device="meta"), guidance=torch.zeros(1, device="meta"),
        img_ids=torch.zeros(tokens, 3, device="meta"), txt_ids=torch.zeros(text_tokens, 3, device="meta"),
        return_dict=False,
    ))  # fmt: skip


def _uso_image_encoder(model: Any) -> Measure:
    side = SIGLIP_SO400M_VISION["image_size"]

    def encode() -> Any:
        hidden_states = model["encoder"](pixel_values=_empty(1, 3, side, side), output_hidden_states=True)
        return model["projector"](hidden_states.hidden_states)

    return _measure(encode)


def _text_encoder(model: Any, tokens: int) -> Measure:
    import torch

    return _measure(lambda: model(input_ids=torch.zeros(1, tokens, dtype=torch.long, device="meta")))


def _flux_vae_encode(model: Any, width: int, height: int) -> Measure:
    return _measure(lambda: model.encode(_empty(1, 3, height, width)))


def _flux_vae_decode(model: Any, width: int, height: int) -> Measure:
    return _measure(lambda: model.decode(_empty(1, model.config.latent_channels, height // 8, width // 8)))


def _upscaler(model: Any, width: int, height: int) -> Measure:
    return _measure(lambda: model(_empty(1, 3, height, width)))


@cache
def _caption_steps(model: Any, width: int, height: int, prompt_tokens: int) -> tuple[Measure, Measure, int]:
    """The captioner's (vision tower and prefill, first decode step, the FLOPs each further step adds)."""
    grid = _vision_grid(QWEN3_VL_PROCESSOR, width, height)
    context = _merged_tokens(QWEN3_VL_PROCESSOR, grid) + 2 + prompt_tokens  # + the vision markers
    hidden = model.config.text_config.hidden_size
    prefill = _vision(model, QWEN3_VL_PROCESSOR, [grid])

    def step(past: Any, tokens: int) -> Any:
        import torch

        positions = torch.zeros(3, 1, tokens, dtype=torch.long, device="meta")
        # generate() asks for the last token's logits only.
        return model(inputs_embeds=_empty(1, tokens, hidden), position_ids=positions, past_key_values=past,
                     use_cache=True, logits_to_keep=1).past_key_values  # fmt: skip

    caches: list[Any] = []
    prefill = _in_turn(prefill, _measure(lambda: caches.append(step(None, context))))
    first = _measure(lambda: caches.append(step(caches[-1], 1)))
    second = _measure(lambda: step(caches[-1], 1))
    return prefill, first, second.flops - first.flops


def _captioner(model: Any, width: int, height: int, prompt_tokens: int, new_tokens: int) -> Measure:
    if new_tokens < 1:
        raise ValueError(f"a caption has at least one new token, got new_tokens={new_tokens}")
    prefill, first, growth = _caption_steps(model, width, height, prompt_tokens)
    # The prefill gives the first token; each later one is a decode step over one more cached token than the last
    # (what a step adds is attention to that token). The cache a step reads grows by a token a step: the first
    # step's activations are within a few % of the last's.
    steps = new_tokens - 1
    grown = growth * steps * (steps - 1) // 2
    flops = prefill.flops + steps * first.flops + grown
    attention = prefill.attention_flops + steps * first.attention_flops + grown
    return Measure(flops, max(prefill.activation_bytes, first.activation_bytes), attention)


def _wan_transformer(base: str) -> Callable[..., Measure]:
    def count(model: Any, frames: int, width: int, height: int) -> Measure:
        inputs = wan_flops.evaluation_inputs(wan_flops.latent_shape(base, frames, height, width))
        return _measure(lambda: model(**inputs, return_dict=False))

    return count


def _wan_vae_encode(model: Any, frames: int, width: int, height: int) -> Measure:
    return _measure(lambda: model.encode(_empty(1, 3, frames, height, width)))


def _wan_vae_decode(base: str) -> Callable[..., Measure]:
    def count(model: Any, frames: int, width: int, height: int) -> Measure:
        return _measure(lambda: model.decode(_empty(*wan_flops.latent_shape(base, frames, height, width))))

    return count


def _identity(model: Any) -> Measure:
    return _measure(lambda: model(_empty(1, 3, DLIB_FACE_CHIP, DLIB_FACE_CHIP)))


# Parts ------------------------------------------------------------------------------------------------------------


def _edit_shape(profile: Any) -> dict[str, int]:
    edit = profile.edit
    return {**_tile(edit.size), "condition_area": edit.condition_area, **_prompt_shape(profile)}


def _prompt_shape(profile: Any) -> dict[str, int]:
    edit = profile.edit
    return {"conditions": 1, "vl_condition_area": edit.vl_condition_area, "prompt_tokens": EDIT_PROMPT_TOKENS}


def _condition_shape(profile: Any) -> dict[str, int]:
    width, height = condition_size(profile.edit.condition_area)
    return {"width": width, "height": height}


def uso_tokens(upscale: Any) -> dict[str, int]:
    """The tokens USO adds to a refine's transformer pass: the subject's (a square crop at `uso_subject_size`, an
    assumption: a face crop is about as tall as wide) and, with `uso_style`, the projector's style tokens."""
    subject = (upscale.uso_subject_size // 16) ** 2 if upscale.uso else 0
    return {"subject_tokens": subject, "style_tokens": USO_STYLE_TOKENS if upscale.uso_style else 0}


def _tile(side: int) -> dict[str, int]:
    return {"width": side, "height": side}


def _clip(profile: Any) -> dict[str, int]:
    return {"frames": profile.render.video_frames, "width": profile.render.size, "height": profile.render.size}


# role.part -> (module, counter, production shape from a profile, that profile).
_PARTS: dict[str, tuple[str, Callable[..., Measure], Callable[[Any], dict[str, int]], str]] = {
    "editor.transformer": ("qwen_image_transformer", _editor_transformer, _edit_shape, "production"),
    "editor.text_encoder": ("qwen25_vl", _editor_text_encoder, _prompt_shape, "production"),
    "editor.vae_encode": ("qwen_image_vae", _image_vae_encode, _condition_shape, "production"),
    "editor.vae_decode": ("qwen_image_vae", _image_vae_decode, lambda p: _tile(p.edit.size), "production"),
    "refiner.transformer": ("flux_transformer", _refiner_transformer, lambda p: {
        **_tile(p.upscale.tile), **uso_tokens(p.upscale),
    }, "production"),
    "refiner.image_encoder": ("uso_image_encoder", _uso_image_encoder, lambda p: {}, "production"),
    "refiner.text_encoder": ("clip_l", _text_encoder, lambda p: {"tokens": CLIP_TOKENS}, "production"),
    "refiner.text_encoder_2": ("t5_xxl", _text_encoder, lambda p: {"tokens": T5_TOKENS}, "production"),
    "refiner.vae_encode": ("flux_vae", _flux_vae_encode, lambda p: _tile(p.upscale.tile), "production"),
    "refiner.vae_decode": ("flux_vae", _flux_vae_decode, lambda p: _tile(p.upscale.tile), "production"),
    "upscaler": ("esrgan", _upscaler, lambda p: _tile(p.upscale.esrgan_tile), "production"),
    # The captioner sees the final image (upscale.size) and may write up to caption.max_new_tokens tokens.
    "captioner": ("qwen3_vl", _captioner, lambda p: {
        **_tile(p.upscale.size), "prompt_tokens": CAPTION_PROMPT_TOKENS, "new_tokens": p.caption.max_new_tokens,
    }, "production"),  # fmt: skip
    "video.transformer": ("wan22_14b", _wan_transformer("wan22_14b"), _clip, "production"),
    "video.text_encoder": ("umt5_xxl", _text_encoder, lambda p: {"tokens": wan_flops.TEXT_TOKENS}, "production"),
    "video.vae_encode": ("wan21_vae", _wan_vae_encode, _clip, "production"),
    "video.vae_decode": ("wan21_vae", _wan_vae_decode("wan22_14b"), _clip, "production"),
    "video-5b.transformer": ("wan22_5b", _wan_transformer("wan22_5b"), _clip, "production-5b"),
    "video-5b.vae_encode": ("wan22_vae", _wan_vae_encode, _clip, "production-5b"),
    "video-5b.vae_decode": ("wan22_vae", _wan_vae_decode("wan22_5b"), _clip, "production-5b"),
    "identity": ("dlib_resnet", _identity, lambda p: {}, "production"),
}  # fmt: skip
PARTS: tuple[str, ...] = tuple(_PARTS)


def _part(role_part: str) -> tuple[str, Callable[..., Measure], Callable[[Any], dict[str, int]], str]:
    if role_part not in _PARTS:
        raise ValueError(f"unknown part {role_part!r}; known: {', '.join(PARTS)}")
    return _PARTS[role_part]


def meta_model(role_part: str) -> nn.Module:
    """A new real-size module of `role_part` on the meta device in bfloat16, frozen, in eval mode."""
    return _build(_part(role_part)[0])


def _build(module: str) -> nn.Module:
    import torch

    with torch.device("meta"):
        model = _BUILDERS[module]()
    # .bfloat16() rather than .to(): diffusers' to() warns about float32 modules on every cast, and nothing loads.
    model = model.bfloat16()
    model.requires_grad_(False)
    return model.eval()


@cache
def _shared_model(module: str) -> nn.Module:
    """The module the counts run on, built once per process (meta_model gives callers their own)."""
    return _build(module)


def parameter_count(role_part: str) -> int:
    """The number of parameters of `role_part`'s module (a VAE's whole, for its encode and its decode)."""
    module = _part(role_part)[0]
    return kept(f"parameters:{module}", lambda: {"parameters": _parameters(_shared_model(module))})["parameters"]


def _parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def production_shape(role_part: str) -> dict[str, int]:
    """The shape `role_part` is evaluated at under its production profile."""
    return dict(_production_shape(role_part))


@cache
def _production_shape(role_part: str) -> tuple[tuple[str, int], ...]:
    from likeness.models.profiles import load_profile

    _, _, shape, profile = _part(role_part)
    return tuple(shape(load_profile(profile)).items())


def evaluation(role_part: str, **shape: int) -> Measure:
    """FLOPs and peak activation bytes of one evaluation of `role_part` at `shape`, the production shape where not
    given."""
    defaults = production_shape(role_part)
    unknown = sorted(shape.keys() - defaults.keys())
    if unknown:
        raise TypeError(f"{role_part} has no shape {', '.join(unknown)}; its shape: {', '.join(defaults)}")
    shape = {**defaults, **shape}
    key = f"{role_part}:" + ",".join(f"{name}={value}" for name, value in sorted(shape.items()))
    module, count = _part(role_part)[:2]
    return Measure(**kept(key, lambda: count(_shared_model(module), **shape)._asdict()))


def evaluation_flops(role_part: str, **shape: int) -> int:
    """Forward FLOPs of one evaluation of `role_part` at `shape`, the production shape where not given."""
    return evaluation(role_part, **shape).flops


def lora_training_step(base: str, size: int, rank: int, gradient_checkpointing: bool) -> dict[str, int]:
    """One training step of a rank-`rank` LoRA on the Wan transformer `base` at `size`x`size` (one image, as the
    seed trains): the FLOPs of its forward pass and of the whole step (`step`), the peak bytes of the step's own
    tensors (its gradients included), the base's parameters and the LoRA's."""
    key = f"lora_training_step:base={base},checkpointing={gradient_checkpointing:d},rank={rank},size={size}"
    return kept(key, lambda: _lora_training_step(base, size, rank, gradient_checkpointing))


def _lora_training_step(base: str, size: int, rank: int, gradient_checkpointing: bool) -> dict[str, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from likeness.estimate.counting import measure_with_grad
    from likeness.models.wan_lora import LORA_TARGETS

    model = wan_flops.meta_transformer(base, rank, LORA_TARGETS)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    inputs = wan_flops.evaluation_inputs(wan_flops.latent_shape(base, 1, size, size))
    forward: list[int] = []

    def step() -> None:
        with FlopCounterMode(display=False) as counter:
            out = model(**inputs, return_dict=False)[0]
        forward.append(counter.get_total_flops())
        out.float().square().mean().backward()

    with torch.enable_grad():
        measured = measure_with_grad(step)
    lora = sum(parameter.numel() for name, parameter in model.named_parameters() if "lora_" in name)
    return {
        "forward": forward[0],
        # With gradient checkpointing the backward pass runs each block's forward again: counted here, not assumed.
        "step": measured.flops,
        "activation_bytes": measured.activation_bytes,  # the LoRA's gradients included
        "parameters": _parameters(model) - lora,
        "lora_parameters": lora,
    }


# Counts kept between processes ------------------------------------------------------------------------------------

# What the counts depend on beside the libraries: a change to any of these files counts everything again.
COUNTING_SOURCES = tuple(Path(__file__).parent / name for name in ("roles.py", "counting.py", "../models/wan_flops.py"))
# The counts of the production and seed estimates, shipped: a fresh machine's first estimate reads them rather than
# counting for a minute (bin/refresh-estimate-counts writes them again after a change to COUNTING_SOURCES).
PACKAGED_COUNTS = Path(__file__).with_name("counts.json")
_KEPT: dict[str, dict[str, int]] = {}
_count_files: tuple[CountFile, ...] = ()


def keep_counts_in(path: Path | None) -> None:
    """Keep every count in the JSON file at `path` too, so a later process reads it instead of counting, and read
    the packaged counts; None: count in this process only."""
    global _count_files
    if path is None:
        _count_files = ()
        return
    from likeness.estimate.counts import CountFile, fingerprint

    current = fingerprint(COUNTING_SOURCES)
    _count_files = (CountFile(path, current), CountFile(PACKAGED_COUNTS, current))


def kept(key: str, count: Callable[[], dict[str, int]]) -> dict[str, int]:
    """The count under `key`: from this process, from a count file, or counted now (and kept in the first file)."""
    if key in _KEPT:
        return _KEPT[key]
    found = next((kept for file in _count_files if (kept := file.get(key)) is not None), None)
    if found is None:
        found = count()
        if _count_files:
            _count_files[0].put(key, found)
    _KEPT[key] = found
    return found
