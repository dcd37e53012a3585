"""GPU side of the cost estimate: the calibration, seconds, memory modes, and prices from the fake RunPod API."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from likeness.estimate.gpus import (
    GPUS,
    MEMORY_MODES,
    PRICES_AS_OF,
    Price,
    calibration,
    fit,
    peak_memory,
    price_per_hour,
    seconds,
    transfer_seconds,
)
from likeness.runpod.pods import RunPodKeyRejected
from tests.fake_runpod import FakeGpu, FakeRunPod, fake_runpod

KEY = f"rp-test-{secrets.token_hex(8)}"
H100, H200, A100, RTX_4090 = GPUS["H100"], GPUS["H200"], GPUS["A100 80GB"], GPUS["RTX 4090"]
# A Wan 14B pipeline in bf16: the transformer and one of its 40 blocks as `meta_transformer("wan22_14b")` counts
# them, UMT5-XXL's encoder and the Wan 2.1 VAE (rounded).
WAN_14B = {"transformer": 14_288_491_584, "text_encoder": 5_680_000_000, "vae": 127_000_000}
WAN_14B_BLOCK = 351_394_304
ACTIVATIONS = {"transformer": 2 * 2**30, "vae": 3 * 2**30}  # the VAE's decode of a clip takes more than a step


@pytest.fixture
def api(tmp_path: Path) -> Iterator[FakeRunPod]:
    gpus = [FakeGpu(H100.runpod_id, 2.99), FakeGpu(A100.runpod_id, 1.64, community_price=1.19)]
    with fake_runpod(api_key=KEY, gpus=gpus, root=tmp_path / "runpod") as fake:
        yield fake


def test_the_calibration_reproduces_its_measurement() -> None:
    figures = calibration()
    assert 0.05 < figures.factor < 1
    assert figures.evaluations == 80
    assert figures.achieved_tflops == pytest.approx(figures.flops / figures.seconds / 1e12)
    assert figures.factor == pytest.approx(figures.achieved_tflops / H100.bf16_tflops)
    assert seconds(figures.flops, H100) == pytest.approx(1041, rel=0.01)


def test_seconds_scale_with_flops_and_inversely_with_peak() -> None:
    flops = 1e17
    assert seconds(2 * flops, H100) == pytest.approx(2 * seconds(flops, H100))
    assert seconds(flops, A100) / seconds(flops, H100) == pytest.approx(H100.bf16_tflops / A100.bf16_tflops)
    assert seconds(flops, H100, "fp8") == pytest.approx(seconds(flops, H100) / 2, rel=0.01)
    with pytest.raises(ValueError, match="no fp8"):
        seconds(flops, A100, "fp8")


def test_memory_modes_order_as_offload_does() -> None:
    peaks = {mode: peak_memory(WAN_14B, ACTIVATIONS, 2, mode, WAN_14B_BLOCK) for mode in MEMORY_MODES}
    assert peaks["none"] >= peaks["model"] >= peaks["sequential"]
    assert peaks["none"] > peaks["fp8"] >= peaks["sequential"]
    # Every part resident, and the largest activations of any part at work.
    assert peaks["none"] == sum(WAN_14B.values()) * 2 + 3 * 2**30
    # One part at a time: the transformer and its own activations, not the VAE's.
    assert peaks["model"] == WAN_14B["transformer"] * 2 + 2 * 2**30
    assert peaks["fp8"] == sum(WAN_14B.values()) + 3 * 2**30
    assert peaks["sequential"] == WAN_14B_BLOCK * 2 + 3 * 2**30
    # What stays throughout (a trainer's optimizer state) adds in every mode.
    assert peak_memory(WAN_14B, ACTIVATIONS, 2, "model", state_bytes=5) == peaks["model"] + 5
    with pytest.raises(ValueError, match="block_parameters"):
        peak_memory(WAN_14B, ACTIVATIONS, 2, "sequential")
    with pytest.raises(ValueError, match="activations of parts without parameters: unet"):
        peak_memory(WAN_14B, {"unet": 1}, 2, "none")


def test_a_14b_model_needs_offload_or_fp8_on_a_4090_but_not_on_an_h100() -> None:
    limit = RTX_4090.memory_gib * 2**30
    assert peak_memory(WAN_14B, ACTIVATIONS, 2, "none") > limit
    assert peak_memory(WAN_14B, ACTIVATIONS, 2, "model") > limit  # the transformer alone is 28.6 GB
    assert fit(RTX_4090, WAN_14B, ACTIVATIONS, 2, WAN_14B_BLOCK) in ("fp8", "sequential")
    assert fit(H100, WAN_14B, ACTIVATIONS, 2, WAN_14B_BLOCK) == "none"
    assert fit(H100, WAN_14B, {"transformer": 100 * 2**30}, 2, WAN_14B_BLOCK) is None  # past any offload
    assert fit(H100, WAN_14B, ACTIVATIONS, 2, WAN_14B_BLOCK, state_bytes=40 * 2**30) == "model"


def test_the_margin_is_kept_free() -> None:
    # A part of exactly the GPU's memory: fits with no margin, not with the default 10%.
    whole = {"model": int(H100.memory_gib * 2**30) // 2}
    assert fit(H100, whole, {}, 2, 1, margin=0) == "none"
    assert fit(H100, whole, {}, 2, 1) == "fp8"


def test_offloaded_weights_cost_their_copies_at_the_links_rate() -> None:
    # 28.6 GB of bf16 expert over PCIe 5 (the H100's host link) and PCIe 4 (the 4090's).
    expert = WAN_14B["transformer"] * 2
    assert transfer_seconds(expert, H100) == pytest.approx(expert / 50e9)
    assert transfer_seconds(expert, RTX_4090) == pytest.approx(2 * transfer_seconds(expert, H100))


def test_prices_come_from_the_api_with_a_key(api: FakeRunPod) -> None:
    assert price_per_hour(H100, KEY) == Price(2.99, "RunPod API")
    assert price_per_hour(A100, KEY, "COMMUNITY") == Price(1.19, "RunPod API")
    assert price_per_hour(A100, KEY, "ALL") == Price(1.19, "RunPod API")
    # The fake has no H200: the table's price, and the reason it was used.
    price = price_per_hour(H200, KEY)
    assert price.usd_per_hour == H200.secure_usd_per_hour
    assert price.source == f"price table of {PRICES_AS_OF} (the RunPod API gave no SECURE price for NVIDIA H200)"
    assert api.calls == ["GpuTypes"] * 4  # the operation name of the SDK's gpu types query


def test_a_rejected_key_is_an_error_not_a_table_price(api: FakeRunPod) -> None:
    with pytest.raises(RunPodKeyRejected):
        price_per_hour(H100, "rp-wrong-key")


def test_prices_come_from_the_dated_table_without_a_key(api: FakeRunPod) -> None:
    assert price_per_hour(H100, None) == Price(H100.secure_usd_per_hour, f"price table of {PRICES_AS_OF}")
    assert price_per_hour(RTX_4090, None, "ALL").usd_per_hour == RTX_4090.community_usd_per_hour
    assert api.calls == []
    with pytest.raises(ValueError, match="no COMMUNITY price"):
        price_per_hour(H100, None, "COMMUNITY")
