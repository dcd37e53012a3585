"""FLOPs into seconds, peak memory and dollars on named GPUs.

Throughput is calibrated on one published measurement and the same fraction of peak is assumed everywhere: Wan 2.2
T2V-A14B renders 1280x720, 81 frames, in 40 steps with CFG (80 evaluations of one 14B expert) in 1041 s on one H100
(Wan 2.2's README, the official code in bf16). `roles.evaluation_flops` counts one evaluation at that shape (latent
1x16x21x90x160, 75,600 video tokens and 512 text tokens):

    6.523 PFLOP x 80 = 521.9 PFLOP;  521.9 PFLOP / 1041 s = 501 TFLOP/s;  501 / 989.4 (H100 dense bf16) = 0.507

Assumptions, stated because nothing here measured them:
- Every GPU and precision sustains that same 0.507 of its dense tensor peak. The 1041 s include the README run's
  text encoding, VAE decode and model offload, so the fraction is of a whole render, not of the transformer alone.
  Cross-check, not used: LightX2V's 974 s for Wan 2.1 I2V-14B's official 40-step code on an H200 (same peak, about
  the same FLOPs) is 6% faster than this predicts; its 44 s for 4 steps in FP8 with SageAttention is 26 s of
  transformer at this fraction of the FP8 peak, the rest encoders and VAE.
- "fp8" means every FLOP runs at the FP8 rate (FP8 linears and an 8-bit attention). About 70% of a 720p Wan
  evaluation is attention: with FP8 linears alone, count the attention FLOPs at "bf16".
- Peaks are the vendors' dense figures (no 2:4 sparsity), with FP32 accumulation as PyTorch uses for bf16 matmuls.
- Memory is what nvidia-smi reports as the card's total; prices are list prices (see PRICES_AS_OF).
- Offloaded weights cost copy time at the link's rate (PCIE4, PCIE5), not overlapped with compute: model offload
  moves in the parts each pipeline call runs, sequential offload streams the largest part in at every evaluation.
  Cross-check, not used: the seed's "1.5 hours" for its 14B LoRA on an RTX 5090 in AI Toolkit's low-VRAM mode
  against the estimate's sequential-offload training there (1.47 h).
"""

from __future__ import annotations

import functools
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, SecretStr

from likeness.runpod.pods import CloudType, RunPodClient

Precision = Literal["bf16", "fp8"]
MemoryMode = Literal["none", "model", "fp8", "sequential"]
# Preferred first: "none" and "model" compute the same numbers ("model" moves each part to the GPU once per call,
# seconds), "fp8" changes the numbers, "sequential" streams every layer over PCIe at every evaluation (many times
# slower).
MEMORY_MODES: tuple[MemoryMode, ...] = ("none", "model", "fp8", "sequential")
# The share of a GPU's memory kept free: the CUDA context, the allocator's fragmentation and what the estimate misses.
MEMORY_MARGIN = 0.10

# RunPod's public list prices per GPU-hour, on-demand, secure cloud and community cloud, as known to the author of
# this table on that date (no internet to re-read them): assumptions. With a RunPod key, `price_per_hour` asks the API.
PRICES_AS_OF = "2026-11-25"

CALIBRATION_SECONDS = 1041.0  # Wan 2.2 README: T2V-A14B, 1280x720, 81 frames, 40 steps with CFG, one H100
CALIBRATION_EVALUATIONS = 80  # 40 steps x 2 (CFG: conditional and unconditional)
CALIBRATION_GPU = "H100"


class GpuType(BaseModel):
    """A GPU one can rent on RunPod: its memory, dense tensor peaks and list prices."""

    model_config = ConfigDict(frozen=True)

    name: str
    runpod_id: str  # as RunPod's API names it (`gpuTypes { id }`)
    memory_gib: float
    bf16_tflops: float
    fp8_tflops: float | None  # None: no FP8 tensor cores
    secure_usd_per_hour: float
    community_usd_per_hour: float | None  # None: no community figure in the table
    host_gb_per_s: float  # host-to-GPU copies over its PCIe link: what offloaded weights stream at

    def peak_tflops(self, precision: Precision) -> float:
        """The dense tensor peak at `precision`; ValueError where the GPU has no such tensor cores."""
        peak = self.bf16_tflops if precision == "bf16" else self.fp8_tflops
        if peak is None:
            raise ValueError(f"the {self.name} has no {precision} tensor cores")
        return peak


# What pinned host-to-GPU copies reach over a x16 link, about 80% of its 32 (PCIe 4) or 64 GB/s (PCIe 5): an
# assumption. diffusers' offload copies from pageable memory, often slower.
PCIE4, PCIE5 = 25.0, 50.0

# Peaks: NVIDIA's datasheets (H100/H200 SXM, A100, L40S) and the Ada and Blackwell GeForce whitepapers (RTX 4090,
# RTX 5090: the FP32-accumulate rows, half the FP16-accumulate ones).
GPUS: dict[str, GpuType] = {
    gpu.name: gpu
    for gpu in (
        GpuType(name="H100", runpod_id="NVIDIA H100 80GB HBM3", memory_gib=79.6, bf16_tflops=989.4,
                fp8_tflops=1978.9, secure_usd_per_hour=2.69, community_usd_per_hour=None, host_gb_per_s=PCIE5),
        GpuType(name="H200", runpod_id="NVIDIA H200", memory_gib=140.4, bf16_tflops=989.4, fp8_tflops=1978.9,
                secure_usd_per_hour=3.59, community_usd_per_hour=None, host_gb_per_s=PCIE5),
        GpuType(name="A100 80GB", runpod_id="NVIDIA A100 80GB PCIe", memory_gib=80.0, bf16_tflops=312.0,
                fp8_tflops=None, secure_usd_per_hour=1.64, community_usd_per_hour=1.19, host_gb_per_s=PCIE4),
        GpuType(name="RTX 4090", runpod_id="NVIDIA GeForce RTX 4090", memory_gib=24.0, bf16_tflops=165.2,
                fp8_tflops=330.3, secure_usd_per_hour=0.69, community_usd_per_hour=0.34, host_gb_per_s=PCIE4),
        GpuType(name="RTX 5090", runpod_id="NVIDIA GeForce RTX 5090", memory_gib=31.8, bf16_tflops=209.5,
                fp8_tflops=419.0, secure_usd_per_hour=0.89, community_usd_per_hour=None, host_gb_per_s=PCIE5),
        GpuType(name="L40S", runpod_id="NVIDIA L40S", memory_gib=45.0, bf16_tflops=362.1, fp8_tflops=733.0,
                secure_usd_per_hour=0.86, community_usd_per_hour=0.79, host_gb_per_s=PCIE4),
    )
}  # fmt: skip


class Calibration(NamedTuple):
    """The published render the throughput fraction comes from, and the figures derived from it."""

    seconds: float
    evaluations: int
    flops: float  # of all the evaluations
    achieved_tflops: float
    peak_tflops: float
    factor: float  # achieved / peak


class Price(NamedTuple):
    """Dollars per GPU-hour, and where the figure comes from."""

    usd_per_hour: float
    source: str


@functools.lru_cache(maxsize=1)
def calibration() -> Calibration:
    """Count the calibration render's FLOPs and the fraction of peak it reached."""
    from likeness.estimate.roles import evaluation_flops

    forward = evaluation_flops("video.transformer", frames=81, width=1280, height=720)
    flops = float(CALIBRATION_EVALUATIONS * forward)
    achieved = flops / CALIBRATION_SECONDS / 1e12
    peak = GPUS[CALIBRATION_GPU].peak_tflops("bf16")
    return Calibration(CALIBRATION_SECONDS, CALIBRATION_EVALUATIONS, flops, achieved, peak, achieved / peak)


def sustained_tflops(gpu: GpuType, precision: Precision = "bf16") -> float:
    """The throughput assumed on `gpu` at `precision`: its peak times the calibrated fraction."""
    return gpu.peak_tflops(precision) * calibration().factor


def seconds(flops: float, gpu: GpuType, precision: Precision = "bf16") -> float:
    """How long `flops` take on `gpu` at `precision`, at the sustained throughput."""
    return flops / (sustained_tflops(gpu, precision) * 1e12)


def transfer_seconds(weight_bytes: float, gpu: GpuType) -> float:
    """How long `weight_bytes` take to copy from the host to `gpu`."""
    return weight_bytes / (gpu.host_gb_per_s * 1e9)


def peak_memory(
    parameters: dict[str, int],
    activations: dict[str, int],
    dtype_bytes: int,
    mode: MemoryMode,
    block_parameters: int | None = None,
    state_bytes: int = 0,
) -> int:
    """Bytes on the GPU at the worst moment: the resident weights of `parameters` (per part), the activations of the
    part at work (`activations`, per part: the parts run one at a time) and `state_bytes` that stay throughout (a
    trainer's optimizer).

    "none": every part resident; "model": one part at a time (diffusers' `enable_model_cpu_offload`); "fp8": every
    part resident at one byte a weight; "sequential": about one block, `block_parameters` (required), at a time.
    """
    unknown = sorted(activations.keys() - parameters.keys())
    if unknown:
        raise ValueError(f"activations of parts without parameters: {', '.join(unknown)}")
    working = max(activations.values(), default=0)
    if mode == "none":
        weights = sum(parameters.values()) * dtype_bytes + working
    elif mode == "model":
        weights = max(count * dtype_bytes + activations.get(part, 0) for part, count in parameters.items())
    elif mode == "fp8":
        weights = sum(parameters.values()) + working
    elif mode == "sequential":
        if block_parameters is None:
            raise ValueError("sequential offload needs block_parameters: the weights resident at once")
        weights = block_parameters * dtype_bytes + working
    else:
        raise ValueError(f"unknown memory mode {mode!r}: one of {', '.join(MEMORY_MODES)}")
    return weights + state_bytes


def fit(
    gpu: GpuType,
    parameters: dict[str, int],
    activations: dict[str, int],
    dtype_bytes: int,
    block_parameters: int,
    state_bytes: int = 0,
    margin: float = MEMORY_MARGIN,
    modes: tuple[MemoryMode, ...] = MEMORY_MODES,
) -> MemoryMode | None:
    """The first of `modes` whose peak fits `gpu` with `margin` of its memory free; None if none does."""
    limit = gpu.memory_gib * 2**30 * (1 - margin)
    for mode in modes:
        if peak_memory(parameters, activations, dtype_bytes, mode, block_parameters, state_bytes) <= limit:
            return mode
    return None


def price_per_hour(gpu: GpuType, api_key: SecretStr | str | None, cloud_type: CloudType = "SECURE") -> Price:
    """The on-demand price of one `gpu` on `cloud_type`: from the RunPod API with a key, else from the dated table.

    With a key, the API's refusals and failures raise RunPodError (a rejected key should be seen, not priced around);
    a type the API does not price on that cloud falls back to the table, saying so.
    """
    table = f"price table of {PRICES_AS_OF}"
    if api_key is not None:
        prices = RunPodClient(api_key).gpu_prices([gpu.runpod_id], cloud_type)
        if gpu.runpod_id in prices:
            return Price(prices[gpu.runpod_id], "RunPod API")
        table += f" (the RunPod API gave no {cloud_type} price for {gpu.runpod_id})"
    listed = [
        price
        for cloud, price in (("SECURE", gpu.secure_usd_per_hour), ("COMMUNITY", gpu.community_usd_per_hour))
        if cloud_type in (cloud, "ALL") and price is not None
    ]
    if not listed:
        raise ValueError(f"the {table} lists no {cloud_type} price for the {gpu.name}")
    return Price(min(listed), table)
