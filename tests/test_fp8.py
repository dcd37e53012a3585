"""Weights stored in fp8: the denoisers hold float8 e4m3 and compute in the profile's dtype, their output stays close
to the full-precision pipeline's, the LoRA still trains on the published weights, and the estimate counts the memory.
"""

from __future__ import annotations

import numpy as np
import torch

from likeness.config import ModelProfile, RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.estimate import roles
from likeness.estimate.character import estimate_character
from likeness.estimate.gpus import GPUS, price_per_hour
from likeness.models import pipelines
from likeness.models.profiles import load_profile

# The stated tolerance: on the tiny Wan's 64 px still (values 0..1), fp8-stored weights move a pixel by under 0.15
# and the image by under 0.01 on average. The tiny model's random weights are spread wider than trained ones; e4m3
# keeps 3 mantissa bits, a relative error of at most 1/16 a weight.
MEAN_TOLERANCE, MAX_TOLERANCE = 0.01, 0.15


def with_fp8(profile: ModelProfile, *roles_: str) -> ModelProfile:
    models = {role: spec.model_copy(update={"weights": "fp8"}) if role in roles_ else spec
              for role, spec in profile.models.items()}  # fmt: skip
    return profile.model_copy(update={"models": models})


def still(pipe) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(0)
    call = {"prompt": "Ada", "height": 64, "width": 64, "num_frames": 1, "num_inference_steps": 4}
    return pipe(**call, generator=generator, output_type="np").frames[0]


def test_an_fp8_stored_wan_draws_close_to_the_full_precision_one(likeness_env) -> None:
    tiny = load_profile("tiny")
    pipelines.clear()
    try:
        full = pipelines.get_pipeline("video", tiny)
        stored = pipelines.get_pipeline("video", with_fp8(tiny, "video"))
        assert stored is not full  # a load of its own: the weights differ
        assert full.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float32
        assert stored.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float8_e4m3fn
        difference = np.abs(still(full) - still(stored))
    finally:
        pipelines.clear()
    assert 0 < difference.mean() < MEAN_TOLERANCE and difference.max() < MAX_TOLERANCE


def test_the_editor_and_the_refiner_store_their_transformers_in_fp8(likeness_env) -> None:
    tiny = with_fp8(load_profile("tiny"), "editor", "refiner")
    pipelines.clear()
    try:
        for role in ("editor", "refiner"):
            transformer = pipelines.get_pipeline(role, tiny).transformer
            dtypes = {parameter.dtype for parameter in transformer.parameters()}
            assert torch.float8_e4m3fn in dtypes, role
    finally:
        pipelines.clear()


def test_production_fp8_is_production_with_fp8_denoisers_and_another_output_identity() -> None:
    production, fp8 = load_profile("production"), load_profile("production-fp8")
    weights = {role: spec.weights for role, spec in fp8.models.items() if spec.weights}
    assert weights == {"editor": "fp8-matmul", "refiner": "fp8-matmul", "video": "fp8", "animator": "fp8"}
    for role, spec in fp8.models.items():
        assert spec.model_copy(update={"weights": None}) == production.models[role], role
    assert fp8.output_identity() != production.output_identity()  # its outputs differ: its caches are its own


def test_the_estimate_counts_a_byte_a_stored_weight_and_the_same_arithmetic(packaged_counts) -> None:
    l40s = GPUS["L40S"]
    price = price_per_hour(l40s, None)

    def rows(name: str) -> dict:
        profile = load_profile(name)
        config = RunConfig.from_profile(profile)
        return {row.stage: row for row in estimate_character(profile, config, load_catalogue(), l40s, price)}

    full, fp8 = rows("production"), rows("production-fp8")
    # 48 GB: the 20B editor fits resident only in fp8 (no more copies at every shot); its FLOPs are the same.
    assert (full["dataset: edit"].memory_mode, fp8["dataset: edit"].memory_mode) == ("model", "none")
    assert fp8["dataset: edit"].flops == full["dataset: edit"].flops
    assert fp8["dataset: edit"].seconds < full["dataset: edit"].seconds
    # Resident, the refiner's 12B transformer is a byte a weight smaller.
    transformer = roles.parameter_count("refiner.transformer")
    assert full["dataset: upscale + refine"].peak_bytes - fp8["dataset: upscale + refine"].peak_bytes == transformer
    # Training is the published bf16 model's either way.
    assert fp8["training"].peak_bytes == full["training"].peak_bytes


def test_the_lora_trains_on_the_published_weights_of_an_fp8_profile(likeness_env) -> None:
    from PIL import Image

    from likeness.storage.artifacts import put_image
    from tasks.train import fit_lora
    from tests.records import dataset_item, dataset_ref

    tiny = with_fp8(load_profile("tiny"), "video")
    image = put_image(Image.new("RGB", (64, 64), "tan"), "tan.png")
    training = dataset_ref(image, (dataset_item("front", image, "Ada, front"),)).training_set()
    pipelines.clear()
    try:
        fit_lora.fn(training, tiny.train.model_copy(update={"steps": 1, "checkpoint_every": 1}), tiny)
        (trained,) = pipelines._loaded.values()
        assert trained.transformer.blocks[0].attn1.to_q.weight.dtype == torch.float32
    finally:
        pipelines.clear()
