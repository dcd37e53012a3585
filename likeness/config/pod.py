"""Where the LoRA trains: the backends, and the RunPod pod a `runpod-*` backend trains on (`PodConfig`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from likeness.base import Frozen

GpuCloud = Literal["SECURE", "COMMUNITY", "ALL"]
# Where the LoRA trains: this machine, our trainer on a RunPod pod, AI Toolkit on a RunPod pod.
Backend = Literal["local", "runpod-aitoolkit", "runpod-native"]
BACKENDS: tuple[Backend, ...] = ("local", "runpod-aitoolkit", "runpod-native")


class PodConfig(Frozen):
    """The RunPod pod a `runpod-*` backend trains on: GPU types in order of preference, cloud, image, disk, limits."""

    # Tried in order; the first with capacity is taken. Names as RunPod's API gives them (`gpuTypes { id }`).
    gpu_types: tuple[str, ...] = ("NVIDIA GeForce RTX 5090", "NVIDIA RTX 6000 Ada Generation", "NVIDIA H100 80GB HBM3")
    cloud_type: GpuCloud = "SECURE"
    # None: the backend's image (our worker image for runpod-native, ostris/aitoolkit for runpod-aitoolkit).
    image: str | None = None
    container_disk_gb: int = Field(default=100, gt=0)
    # A pod older than this ends itself (and the sweeper terminates it), whatever its job says; its presigned URLs
    # expire then too.
    ttl_hours: float = Field(default=6.0, gt=0)
    # A pod ends itself when its driver's heartbeat has not changed for this long on the pod's own clock (the driver
    # was killed, or its machine lost or asleep). The driver writes it every tenth of this (30 s at most).
    driver_timeout_s: float = Field(default=300.0, ge=1)
    # A pod lost mid-training is replaced this many times, resuming from the last uploaded checkpoint.
    max_replacements: int = Field(default=2, ge=0)
    poll_seconds: float = Field(default=10.0, gt=0)
    # A pod that has not reported progress for this long is taken as lost.
    silent_after_s: float = Field(default=900.0, gt=0)

    @model_validator(mode="after")
    def _some_gpu(self) -> PodConfig:
        if not self.gpu_types:
            raise ValueError("gpu_types is empty: name at least one RunPod GPU type")
        return self
