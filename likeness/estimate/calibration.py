"""What a real GPU measured, read back for the estimate: the fraction of its dense bf16 peak each production part
sustained, in place of the one fraction `likeness.estimate.gpus` assumes for every part.

`bench/gpu_calibrate.py` times each production transformer at its production shape (and a LoRA training step) on
the GPU it runs on, and keeps the measurements in `<data_dir>/gpu-calibration.json` (figures made up):

    {"version": 1, "measurements": [
        {"gpu": "H100", "device_name": "NVIDIA H100 80GB HBM3", "part": "video.transformer", "weights": "bf16",
         "shape": {"frames": 81, "width": 704, "height": 704}, "flops": 2345400000000000, "seconds": 4.1, "runs": 2,
         "peak_bytes": 33000000000, "estimated_seconds": 4.68, "estimated_peak_bytes": 33300000000,
         "measured_at": "2026-12-07T03:00:00Z", "libraries": {"torch": "2.13.0+cu128", ...}},
        ...]}

`gpu` is a key of `gpus.GPUS`; `part` a `roles` part or `training_part(base)`; `weights` how the weights were stored
("fp8": diffusers' layerwise casting, computed in bf16; "fp8-matmul": the block linears multiplied in FP8, compiled,
with `fp8_flops` of the FLOPs at the FP8 rate); `flops` are the counted FLOPs of what was timed, `seconds`
the median of `runs` timed calls, `peak_bytes` `torch.cuda.max_memory_allocated()` with the weights;
`estimated_*` what the estimate said for the same call when it was measured. A later run replaces the measurements
of the same GPU, part and weights, and keeps the others.

    calibrated_fraction("H100", "video.transformer")       # a share of peak, or None where no H100 measured it
    calibrated_seconds(flops, GPUS["H100"], "video.transformer")   # gpus.seconds's figure where none did
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from likeness.estimate import gpus, roles
from likeness.estimate.gpus import GpuType
from likeness.files import atomic_file
from likeness.inputs import InvalidInput, TooBig, read_at_most
from likeness.models.wan_flops import WAN_CONFIGS
from likeness.settings import get_settings

CALIBRATION_FILE_NAME = "gpu-calibration.json"
# A measurement takes about 500 bytes: 1 MiB holds every part on every GPU of the table many times over, and a file
# past it is no file the bench wrote.
MAX_CALIBRATION_FILE_BYTES = 2**20
Weights = Literal["bf16", "fp8", "fp8-matmul"]


class CalibrationFileProblem(InvalidInput):
    """A GPU calibration file Likeness refuses; the message names the file."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        super().__init__(f"GPU calibration file {path}: {problem}")


def training_part(base: str) -> str:
    """The part name of one LoRA training step on the Wan transformer `base` (`roles.lora_training_step`)."""
    return f"lora_training_step:{base}"


KNOWN_PARTS = frozenset(roles.PARTS) | {training_part(base) for base in WAN_CONFIGS}


class Measurement(BaseModel):
    """One call timed on one GPU, beside what the estimate said for it."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    gpu: str
    device_name: str
    part: str
    weights: Weights
    shape: dict[str, int]
    flops: int = Field(gt=0)
    # Of `flops`, those that ran at the FP8 rate (fp8-matmul: all but the attention's).
    fp8_flops: int = Field(default=0, ge=0)
    seconds: float = Field(gt=0)
    runs: int = Field(ge=1)
    peak_bytes: int = Field(ge=0)
    estimated_seconds: float = Field(gt=0)
    estimated_peak_bytes: int = Field(ge=0)
    measured_at: datetime
    libraries: dict[str, str]

    @field_validator("gpu")
    @classmethod
    def _known_gpu(cls, gpu: str) -> str:
        if gpu not in gpus.GPUS:
            raise ValueError(f"unknown GPU {gpu!r}; known: {', '.join(gpus.GPUS)}")
        return gpu

    @field_validator("part")
    @classmethod
    def _known_part(cls, part: str) -> str:
        if part not in KNOWN_PARTS:
            raise ValueError(f"unknown part {part!r}; known: {', '.join(sorted(KNOWN_PARTS))}")
        return part

    @property
    def key(self) -> tuple[str, str, str]:
        return self.gpu, self.part, self.weights

    @property
    def fraction(self) -> float:
        """The share of the GPU's dense peaks the call sustained: what it would take at the peaks (bf16, and FP8 for
        `fp8_flops`) over what it took."""
        gpu = gpus.GPUS[self.gpu]
        at_peaks = (self.flops - self.fp8_flops) / (gpu.bf16_tflops * 1e12)
        if self.fp8_flops:
            at_peaks += self.fp8_flops / ((gpu.fp8_tflops or gpu.bf16_tflops) * 1e12)
        return at_peaks / self.seconds


class GpuCalibration(BaseModel):
    """The calibration file: at most one measurement per GPU, part and weights."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    measurements: tuple[Measurement, ...] = ()

    @model_validator(mode="after")
    def _one_per_key(self) -> GpuCalibration:
        keys = [measurement.key for measurement in self.measurements]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"measured more than once: {', '.join('/'.join(key) for key in repeated)}")
        return self

    def find(self, gpu_name: str, part: str, weights: Weights = "bf16") -> Measurement | None:
        return next((m for m in self.measurements if m.key == (gpu_name, part, weights)), None)

    def replaced(self, measurements: list[Measurement]) -> GpuCalibration:
        """This calibration with `measurements` in place of those of the same GPU, part and weights."""
        new = {measurement.key for measurement in measurements}
        kept = [measurement for measurement in self.measurements if measurement.key not in new]
        return GpuCalibration(measurements=(*kept, *measurements))


def calibration_file() -> Path:
    """Where the bench keeps its measurements: in the data folder."""
    return get_settings().data_dir / CALIBRATION_FILE_NAME


def read_calibration(path: Path) -> GpuCalibration:
    """The calibration in the file at `path` (none measured where there is no file); CalibrationFileProblem, naming
    the file, where it is too large, not JSON or not a calibration."""
    if not path.exists():
        return GpuCalibration()
    try:
        data = read_at_most(path, MAX_CALIBRATION_FILE_BYTES, "", "a GPU calibration file")
        return GpuCalibration.model_validate(json.loads(data))
    except TooBig as exc:
        raise CalibrationFileProblem(path, exc.problem) from None
    except OSError as exc:
        raise CalibrationFileProblem(path, f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise CalibrationFileProblem(path, "is not text (UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise CalibrationFileProblem(path, f"is not JSON ({exc.msg}, line {exc.lineno})") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or 'the file'}: {error['msg']}" for error in exc.errors()
        )
        raise CalibrationFileProblem(path, f"is no GPU calibration ({problems})") from None


def save_measurements(path: Path, measurements: list[Measurement]) -> GpuCalibration:
    """Keep `measurements` in the file at `path`, in place of earlier ones of the same GPU, part and weights; the
    file is written whole or not at all."""
    calibration = read_calibration(path).replaced(measurements)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as file:
        file.write(calibration.model_dump_json(indent=1).encode())
    return calibration


def calibrated_fraction(
    gpu_name: str, role_part: str, weights: Weights = "bf16", path: Path | None = None
) -> float | None:
    """The share of its dense peaks `role_part` sustained on a `gpu_name` (a key of `gpus.GPUS`) with `weights`, as
    measured, or None where that GPU did not measure it. `path`: the calibration file, the data folder's where not
    given."""
    measurement = read_calibration(path or calibration_file()).find(gpu_name, role_part, weights)
    return None if measurement is None else measurement.fraction


def calibrated_seconds(
    flops: float, gpu: GpuType, role_part: str | None, path: Path | None = None, fp8_flops: float = 0.0
) -> float:
    """How long `flops` take on `gpu`, `fp8_flops` of them at its FP8 peak and the rest at its bf16 peak, at the
    fraction `role_part` measured there (with fp8-matmul weights for FP8 work where measured, else with bf16 weights),
    or at the fraction `gpus` assumes where it measured none (or `role_part` is None: nothing to calibrate on).
    ValueError for FP8 work on a GPU without FP8 tensor cores."""
    if fp8_flops and gpu.fp8_tflops is None:
        raise ValueError(
            f"the {gpu.name} has no FP8 tensor cores: weights fp8-matmul need compute capability 8.9 or later "
            "(L40S, RTX 4090, H100, H200, RTX 5090); price this profile on one of those, or use weights fp8"
        )
    fraction = None
    if role_part is not None:
        # FP8 work at the share its fp8-matmul run measured, else at the bf16 run's (the same share of each peak).
        measured = ("fp8-matmul", "bf16") if fp8_flops else ("bf16",)
        fractions = (calibrated_fraction(gpu.name, role_part, weights, path) for weights in measured)
        fraction = next((found for found in fractions if found is not None), None)
    if fraction is None:
        fraction = gpus.calibration().factor
    at_peaks = (flops - fp8_flops) / (gpu.peak_tflops("bf16") * 1e12)
    if fp8_flops:
        at_peaks += fp8_flops / (gpu.peak_tflops("fp8") * 1e12)
    return at_peaks / fraction
