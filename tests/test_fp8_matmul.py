"""FP8 matmuls (`weights: fp8-matmul`): the editor's and the refiner's block linears multiply in FP8 with a scale per
row, compiled, and their stages' images stay close to bf16's; GPUs without FP8 tensor cores, sequential offload,
other roles and other dtypes are refused before anything loads."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from likeness.config import ModelProfile
from likeness.models import pipelines
from likeness.models.fp8 import E4M3, Fp8Linear, fp8_matmul_refusal, use_fp8_matmuls
from likeness.models.profiles import load_profile

# The stated tolerance, on images with values 0..255: fp8-matmul's stage outputs stay within 3 levels of bf16's on
# average and 32 at most (measured: 0.6 and 6 for the edit, 2.0 and 23 for the refine of that edit). e4m3 keeps 3
# mantissa bits of the weights and the inputs alike, so a product is off by about 1/16 a term, which four tiny
# denoising steps of random weights carry into the pixels.
MEAN_TOLERANCE, MAX_TOLERANCE = 3.0, 32.0


@contextmanager
def said_by(logger: logging.Logger) -> Iterator[list[str]]:
    """The lines `logger` says at INFO while inside."""
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def tiny_bf16(**weights: str) -> ModelProfile:
    """The tiny profile in bfloat16, with `weights` (role -> setting) on its roles, validated as a file would be."""
    tiny = load_profile("tiny").model_dump()
    tiny["dtype"] = "bfloat16"
    for role, setting in weights.items():
        tiny["models"][role]["weights"] = setting
    return ModelProfile.model_validate(tiny)


def test_an_fp8_linear_is_a_linear_rounded_to_e4m3_by_row() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32).to(torch.bfloat16)
    inputs = torch.randn(2, 5, 64, dtype=torch.bfloat16)
    fp8 = Fp8Linear(linear, "cpu")
    assert fp8.weight.dtype == E4M3 and fp8.weight.shape == (32, 64)
    assert fp8.weight_scale.dtype == torch.float32 and fp8.weight_scale.shape == (32, 1)
    # Each row uses e4m3's whole range: its largest magnitude is the format's largest, 448.
    assert torch.all(fp8.weight.float().abs().amax(dim=1) == 448)
    # The weights come back within e4m3's rounding (3 mantissa bits: 1/16 of a value at most).
    restored = fp8.weight.float() * fp8.weight_scale
    assert torch.all((restored - linear.weight.float()).abs() <= linear.weight.float().abs() / 16 + 1e-6)
    out, exact = fp8(inputs), linear(inputs)
    assert out.shape == (2, 5, 32) and out.dtype == torch.bfloat16
    assert 0 < (out.float() - exact.float()).abs().mean() < 0.05 * exact.float().abs().mean()
    assert [name for name, _ in fp8.named_parameters()] == ["bias"]  # the weights are buffers: dtype stays bf16


def test_only_the_block_linears_with_sides_of_16_are_replaced() -> None:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).to(torch.bfloat16)  # fmt: skip
    replaced, kept = use_fp8_matmuls(model, "cpu")
    blocks = [*model.transformer_blocks, *model.single_transformer_blocks]
    in_blocks = [module for block in blocks for module in block.modules() if isinstance(module, Fp8Linear)]
    assert replaced == len(in_blocks) > 0 and kept == 0
    # The embedders and the output head stay linear layers in bf16.
    assert type(model.x_embedder) is torch.nn.Linear and type(model.proj_out) is torch.nn.Linear
    assert model.x_embedder.weight.dtype == torch.bfloat16


def test_a_gpu_without_fp8_tensor_cores_is_refused_by_name() -> None:
    refusal = fp8_matmul_refusal("refiner", "NVIDIA A100 80GB PCIe", (8, 0))
    assert refusal is not None
    assert "NVIDIA A100 80GB PCIe (compute capability 8.0)" in refusal and "Use weights fp8" in refusal
    for capability in ((8, 9), (9, 0), (10, 0), (12, 0)):  # L40S and RTX 4090, H100 and H200, B200, RTX 5090
        assert fp8_matmul_refusal("refiner", "GPU", capability) is None


def test_sequential_offload_is_refused_before_the_refiner_loads(likeness_env) -> None:
    profile = tiny_bf16(refiner="fp8-matmul").with_memory_modes({"refiner": "sequential"})
    pipelines.clear()
    with pytest.raises(ValueError, match="refiner: weights fp8-matmul do not run under sequential offload"):
        pipelines._check_fp8_matmuls("refiner", profile, "cuda")
    assert pipelines.load_counts["refiner"] == 0


def test_fp8_matmul_is_for_the_editor_and_the_refiner_of_a_bfloat16_profile() -> None:
    with pytest.raises(ValueError, match="the video takes its LoRAs as adapters at each call"):
        tiny_bf16(video="fp8-matmul")
    tiny = load_profile("tiny").model_dump()
    tiny["models"]["refiner"]["weights"] = "fp8-matmul"
    with pytest.raises(ValueError, match="the refiner's weights fp8-matmul compute from bfloat16, not float32"):
        ModelProfile.model_validate(tiny)


def test_the_refine_and_the_edit_in_fp8_draw_close_to_bf16(likeness_env) -> None:
    from PIL import Image

    from likeness.storage.artifacts import load_image, put_image
    from tasks.upscale import upscale_image
    from tasks.variations import edit_variation

    plain, fp8 = tiny_bf16(), tiny_bf16(editor="fp8-matmul", refiner="fp8-matmul")
    reference = put_image(Image.new("RGB", (64, 64), (150, 110, 90)), "reference.png")

    def stage_images(profile: ModelProfile) -> list[np.ndarray]:
        edited = edit_variation.fn([reference], "side view", 64, 64, profile.edit, 1, profile, "side.png")
        refined = upscale_image.fn(edited, profile.upscale, "photo of Ada", 0, profile, None).image
        return [np.asarray(load_image(ref), dtype=np.float32) for ref in (edited, refined)]

    pipelines.clear()
    try:
        expected = stage_images(plain)
        with said_by(pipelines.log) as lines:
            drawn = stage_images(fp8)
        refiner = pipelines.get_pipeline("refiner", fp8).transformer
        block = refiner.transformer_blocks[0]
        assert isinstance(block.attn.to_q, Fp8Linear) and block._compiled_call_impl is not None
        editor = pipelines.get_pipeline("editor", fp8).transformer
        assert isinstance(editor.transformer_blocks[0].attn.to_q, Fp8Linear)
    finally:
        pipelines.clear()
    assert "refiner: 20 linear layers of the transformer's blocks multiply in FP8 (0 kept as they were)" in lines[-1]
    for name, before, after in zip(("edit", "refine"), expected, drawn, strict=True):
        difference = np.abs(before - after)
        assert before.shape == after.shape, name
        assert 0 < difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE, (name, difference.mean())


def test_the_estimate_counts_the_block_linears_at_the_fp8_rate_and_attention_at_bf16(packaged_counts) -> None:
    from likeness.config import RunConfig
    from likeness.dataset.catalogue import load_catalogue, shot_size
    from likeness.estimate import roles
    from likeness.estimate.character import EDIT_MULTIPLE, edit_work, estimate_character
    from likeness.estimate.gpus import GPUS, price_per_hour, seconds

    h100 = GPUS["H100"]
    price = price_per_hour(h100, None)
    plain, fp8 = load_profile("production"), load_profile("production-fp8")
    config = RunConfig.from_profile(fp8)
    shots = load_catalogue().shots(config.dataset.variations, garments=0, poses=0)
    # One shot's edit: every step's transformer FLOPs but its attention's run at the FP8 rate.
    edit_config, shot = config.dataset.edit, shots[0]
    width, height = shot_size(shot.aspect, edit_config.size, EDIT_MULTIPLE)
    transformer = roles.evaluation(
        "editor.transformer", width=width, height=height, condition_area=edit_config.condition_area,
        conditions=1 + (shot.needs is not None), vl_condition_area=edit_config.vl_condition_area,
        prompt_tokens=roles.EDIT_PROMPT_TOKENS,
    )  # fmt: skip
    edit = edit_work(config.dataset, [shot], fp8).expected
    assert 0 < transformer.attention_flops < transformer.flops
    assert edit.fp8_flops == edit_config.steps * (transformer.flops - transformer.attention_flops)
    assert edit_work(config.dataset, [shot], plain).expected.fp8_flops == 0
    assert seconds(edit.flops - edit.fp8_flops, h100) + seconds(edit.fp8_flops, h100, "fp8") < seconds(edit.flops, h100)

    def rows(profile: ModelProfile) -> dict:
        return {row.stage: row for row in estimate_character(profile, config, load_catalogue(), h100, price)}

    before, after = rows(plain), rows(fp8)
    for stage in ("dataset: edit", "dataset: upscale + refine"):
        assert after[stage].flops == before[stage].flops
        # Not twice as fast: attention, the VAEs, the text encoders and the upscaler stay bf16.
        assert 0.5 * before[stage].seconds < after[stage].seconds < 0.8 * before[stage].seconds, stage
    assert after["training"].seconds == before["training"].seconds  # the LoRA trains on the bf16 model
    # Two models compile: from inductor's cache on a worker that compiled them before, cold at most.
    assert "compiling" not in before
    assert (after["compiling"].seconds, after["compiling"].most_seconds) == (20, 90)


def test_the_estimate_refuses_fp8_matmuls_on_a_gpu_without_fp8_tensor_cores(packaged_counts) -> None:
    from likeness.config import RunConfig
    from likeness.dataset.catalogue import load_catalogue
    from likeness.estimate.character import estimate_character
    from likeness.estimate.gpus import GPUS, price_per_hour

    fp8, a100 = load_profile("production-fp8"), GPUS["A100 80GB"]
    with pytest.raises(ValueError, match="the A100 80GB has no FP8 tensor cores: weights fp8-matmul need"):
        estimate_character(fp8, RunConfig.from_profile(fp8), load_catalogue(), a100, price_per_hour(a100, None))
