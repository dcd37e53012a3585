"""FLOPs of the production model parts, counted on the meta device (likeness.estimate.roles)."""

from __future__ import annotations

import pytest
import torch

from likeness.estimate import roles
from likeness.identity import EMBEDDING_FILE, default_models_dir

# Published sizes, in parameters. A VAE's encode and decode parts are one module: its decode stands for both.
PUBLISHED = {
    # Qwen/Qwen-Image's transformer as the Hub counts its safetensors: 20.4B (the card's "20B MMDiT"); Edit-2511 has
    # the same layout.
    "editor.transformer": 20.4e9,
    # Qwen/Qwen2.5-VL-7B-Instruct as the Hub counts it: 8.29B with its vision tower and output head (the language
    # model alone, with its head, is 7.6B). The editor's text_encoder is that model.
    "editor.text_encoder": 8.29e9,
    # Wan-VAE, 127M (Wan's technical report, and Wan2.1_VAE.pth's 508 MB of float32); Qwen-Image's VAE is its
    # architecture with a fine-tuned decoder.
    "editor.vae_decode": 127e6,
    # FLUX.1-dev's card: a "12 billion parameter" transformer; flux1-dev.safetensors is 23.8 GB in bfloat16: 11.9B.
    "refiner.transformer": 11.9e9,
    # CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14): 123M; FLUX's clip_l.safetensors is 246 MB in fp16.
    "refiner.text_encoder": 123e6,
    # T5 v1.1 XXL's encoder, FLUX.1-dev's text_encoder_2: 4.76B as the Hub counts it.
    "refiner.text_encoder_2": 4.76e9,
    # FLUX.1-dev's ae.safetensors: 335 MB of float32, 83.8M.
    "refiner.vae_decode": 83.8e6,
    # ESRGAN's RRDBNet with 23 blocks of 64 features: 16.7M (Real-ESRGAN's x4plus, the same network, 67 MB of
    # float32; so is Kim2091's 4x-UltraSharp.pth).
    "upscaler": 16.7e6,
    # Qwen/Qwen3-VL-8B-Instruct as the Hub counts it: 8.77B ("8B").
    "captioner": 8.77e9,
    # A Wan 14B transformer as the Hub counts it (each A14B expert is one), 14.3B; Wan 2.2's README rounds the pair
    # to "27B in total, 14B active per step".
    "video.transformer": 14.3e9,
    "video.vae_decode": 127e6,  # Wan-VAE again: the A14B decodes with Wan 2.1's VAE
    # Wan-AI/Wan2.2-TI2V-5B: "5B".
    "video-5b.transformer": 5.0e9,
    # UMT5-XXL's encoder, Wan's text encoder: models_t5_umt5-xxl-enc-bf16.pth is 11.4 GB in bfloat16, 5.68B.
    "video.text_encoder": 5.68e9,
    # Wan 2.2's VAE (the TI2V-5B's): Wan2.2_VAE.pth, 2.82 GB of float32, 705M.
    "video-5b.vae_decode": 705e6,
    # SigLIP so400m's vision tower, 428M (the "400M" of its name), and USO's projector: 3 x (729 x 64 + 1152 x 3072)
    # weights and their biases, 10.8M.
    "refiner.image_encoder": 439e6,
}

# dlib's face descriptor network worked out by hand from its anet_type and dlib's padding rules (no padding at stride
# 2, half the filter at stride 1; add_prev zero-fills to the larger input): (output side, kernel, inputs, filters)
# of each of its 29 convolutions, then the 256 -> 128 fc.
DLIB_CONVS = (
    [(72, 7, 3, 32)]
    + [(35, 3, 32, 32)] * 6
    + [(17, 3, 32, 64)] + [(17, 3, 64, 64)] * 7
    + [(8, 3, 64, 128)] + [(8, 3, 128, 128)] * 5
    + [(3, 3, 128, 256), (3, 3, 256, 256)] + [(4, 3, 256, 256)] * 4
    + [(1, 3, 256, 256)] * 2
)  # fmt: skip


def test_the_identity_replica_is_dlibs_network():
    convolutions = sum(2 * side**2 * kernel**2 * inputs * outputs for side, kernel, inputs, outputs in DLIB_CONVS)
    assert len(DLIB_CONVS) == 29
    assert roles.evaluation_flops("identity") == convolutions + 2 * 256 * 128 == 541_708_288
    # The model file is float32 parameters and a few kilobytes of layer headers.
    size = (default_models_dir() / EMBEDDING_FILE).stat().st_size
    assert roles.parameter_count("identity") * 4 == pytest.approx(size, rel=1e-3)


@pytest.mark.parametrize("part", PUBLISHED)
def test_each_part_builds_at_its_published_size(part: str):
    model = roles.meta_model(part)
    assert all(parameter.is_meta and parameter.dtype == torch.bfloat16 for parameter in model.parameters())
    assert roles.parameter_count(part) == pytest.approx(PUBLISHED[part], rel=0.02)


def test_every_part_has_a_published_size_or_is_the_identity_replica():
    encodes = {part for part in roles.PARTS if part.endswith("vae_encode")}
    assert set(roles.PARTS) - encodes == set(PUBLISHED) | {"identity"}
    for part in encodes:
        assert roles.parameter_count(part) == roles.parameter_count(part.replace("encode", "decode"))


@pytest.mark.parametrize("part", roles.PARTS)
def test_each_part_counts_at_its_production_shape(part: str):
    flops = roles.evaluation_flops(part)
    # Every weight is used at least once (most once per token or pixel), at 2 FLOPs a multiply-add.
    assert flops > 2 * roles.parameter_count(part)
    assert roles.evaluation_flops(part, **roles.production_shape(part)) == flops


def test_production_shapes_are_the_profiles():
    assert roles.production_shape("editor.transformer") == {
        "width": 1024, "height": 1024, "conditions": 1, "condition_area": 1024 * 1024,
        "vl_condition_area": 384 * 384, "prompt_tokens": roles.EDIT_PROMPT_TOKENS,
    }  # fmt: skip
    # USO's subject at 512 px beside each tile: 32 x 32 tokens; no style reference.
    assert roles.production_shape("refiner.transformer") == {
        "width": 1024, "height": 1024, "subject_tokens": 1024, "style_tokens": 0,
    }  # fmt: skip
    assert roles.production_shape("upscaler") == {"width": 512, "height": 512}
    assert roles.production_shape("captioner")["new_tokens"] == 80
    assert roles.production_shape("video.transformer") == {"frames": 81, "width": 704, "height": 704}
    assert roles.production_shape("video-5b.transformer")["frames"] == 41


def test_the_editor_at_twice_the_pixels_costs_more_than_twice():
    # Twice the output's pixels and twice the condition pixels (a second condition image of the same area).
    base = roles.evaluation_flops("editor.transformer")
    double = roles.evaluation_flops("editor.transformer", width=2048, conditions=2)
    assert 2 * base < double < 4 * base


def test_wan_at_twice_the_frames_costs_more_than_twice():
    # 81 and 165 frames are 21 and 42 latent frames: twice the video tokens, with the same 512 text tokens.
    base = roles.evaluation_flops("video.transformer", frames=81, width=832, height=480)
    double = roles.evaluation_flops("video.transformer", frames=165, width=832, height=480)
    assert 2 * base < double < 4 * base


def test_each_caption_token_costs_two_flops_a_parameter_and_a_little_more_than_the_last():
    one, two, three = (roles.evaluation_flops("captioner", new_tokens=n) for n in (1, 2, 3))
    step = two - one
    # The language model's weights once (the vision tower and embedding rows idle) plus attention over ~4,200 tokens.
    assert 0.9 < step / (2 * roles.parameter_count("captioner")) < 1.3
    assert three - two > step
    with pytest.raises(ValueError, match="at least one new token"):
        roles.evaluation_flops("captioner", new_tokens=0)


def test_the_condition_size_is_the_pipelines():
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

    for area in (147_456, 1_048_576, 1_000_000, 3000):
        assert roles.condition_size(area) == calculate_dimensions(area, 1.0)


def test_activations_are_counted_at_the_production_shapes():
    # A 704x704, 81-frame clip: 21 x 44 x 44 = 40,656 video tokens of 5,120 channels in bf16 are 416 MB a tensor;
    # a block holds a few at once (its FFN's 13,824-wide hidden state is 1.1 GB), never an attention matrix.
    video = roles.evaluation("video.transformer").activation_bytes
    assert 2e9 < video < 10e9
    # Attention counted as fused: the 40 heads' 40,656^2 scores alone would be 132 GB in bf16.
    assert video < 40 * 40_656**2 * 2 / 10
    # Half the frames, about half the activations.
    half = roles.evaluation("video.transformer", frames=41).activation_bytes
    assert 0.4 < half / video < 0.6


def test_a_lora_training_step_counts_its_backward_and_checkpointing_trades_memory_for_a_forward():
    plain = roles.lora_training_step("wan22_5b", 256, 8, gradient_checkpointing=False)
    checkpointed = roles.lora_training_step("wan22_5b", 256, 8, gradient_checkpointing=True)
    assert plain["parameters"] == roles.parameter_count("video-5b.transformer")
    assert 0 < plain["lora_parameters"] < plain["parameters"] / 100
    # The frozen base needs no weight gradients: its backward is a matrix product a layer for the input's gradient,
    # none for the text's projections (the text needs no gradient), and the attention's; at 64 video tokens beside
    # 512 text tokens, about half a forward pass. Checkpointing runs most of the forward once more (each block up to
    # what its backward needs: not its last projection).
    assert 1.3 < plain["step"] / plain["forward"] < 3
    assert 0.6 < (checkpointed["step"] - plain["step"]) / plain["forward"] <= 1.0
    assert checkpointed["activation_bytes"] < plain["activation_bytes"] / 3


def test_unknown_parts_and_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown part 'editor.unet'"):
        roles.evaluation_flops("editor.unet")
    with pytest.raises(TypeError, match="upscaler has no shape frames; its shape: width, height"):
        roles.evaluation_flops("upscaler", frames=81)
