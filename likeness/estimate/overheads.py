"""What a character pays besides its models' evaluations: reading each stage's weights, compiling the models that
are compiled, and starting a training pod.

Assumptions, stated because nothing here measured them:
- Weights are read from a local NVMe disk at DISK_GB_PER_S, cold (a page cache that still holds them reads faster),
  once per stage run: every stage releases its models when it ends, so a run in one process and a deployment that
  starts a process per stage both read them once a stage. A resident model is then copied to the GPU at the link's
  rate; an offloaded one is copied at each call, which the stage's own row counts.
- A model whose weights are fp8-matmul has its repeated blocks compiled at its first call, once per process and
  stage run: COLD_COMPILE_SECONDS on a machine that never compiled them (vllm-omni measured 42.7 s more engine start
  for a diffusion transformer's regional compile on one GPU), WARM_COMPILE_SECONDS where inductor's on-disk cache
  holds them from an earlier character (tracing the blocks again, no code generated). Expected warm (a worker makes
  many characters), at most cold.
- A RunPod pod takes POD_BOOT_SECONDS to be scheduled, pull its image and start, then downloads its base model from
  the Hugging Face Hub at HUB_GB_PER_S (no network volume) and reads it from its disk.
"""

from __future__ import annotations

from likeness.estimate.gpus import GpuType, Price, transfer_seconds
from likeness.estimate.work import StageEstimate

DISK_GB_PER_S = 2.0
COLD_COMPILE_SECONDS = 45.0
WARM_COMPILE_SECONDS = 10.0
POD_BOOT_SECONDS = 120.0
HUB_GB_PER_S = 0.5


def load_seconds(file_bytes: float, weight_bytes: float, resident: bool, gpu: GpuType) -> float:
    """Reading `file_bytes` of a stage's models from disk (as published: bf16), and copying them, `weight_bytes` once
    stored as the role says (fp8 is half), to `gpu` when they stay resident."""
    return file_bytes / (DISK_GB_PER_S * 1e9) + (transfer_seconds(weight_bytes, gpu) if resident else 0.0)


def pod_start_seconds(base_weight_bytes: float) -> float:
    """A training pod from its request to its first step: booting, then downloading and reading its base model."""
    return POD_BOOT_SECONDS + base_weight_bytes / (HUB_GB_PER_S * 1e9) + base_weight_bytes / (DISK_GB_PER_S * 1e9)


def overhead_row(stage: str, seconds: float, price: Price) -> StageEstimate:
    """A row of time without model evaluations (loading, a pod's start) at `price`."""
    usd = seconds * price.usd_per_hour / 3600
    return StageEstimate(stage, 0, 0.0, seconds, 0, None, usd, 0.0, seconds, usd, 0.0)


def compile_row(models: int, price: Price) -> StageEstimate:
    """Compiling the repeated blocks of `models` models at `price`: warm expected, cold at most."""
    expected, most = models * WARM_COMPILE_SECONDS, models * COLD_COMPILE_SECONDS
    dollars = price.usd_per_hour / 3600
    return StageEstimate("compiling", 0, 0.0, expected, 0, None, expected * dollars, 0.0, most, most * dollars, 0.0)
