"""The arithmetic checked on a GPU: each production transformer timed on this machine's GPU at its production shape,
beside what the cost estimate says for the same call.

    .venv/bin/python bench/gpu_calibrate.py [--gpu-budget-s 420] [--parts editor.transformer video.transformer ...]

The parts: editor.transformer (Qwen-Image-Edit's 20B), refiner.transformer (FLUX.1-dev's 12B), video.transformer
(one Wan 2.2 A14B expert), video-5b.transformer (Wan 2.2 TI2V-5B), and one LoRA training step of each training
profile's base (lora_training_step:wan22_14b from production, lora_training_step:wan22_5b from production-5b).

Each model is built at its real size from the configuration `likeness.estimate.roles` counts, straight on the GPU
in bf16 with the random weights its classes initialise (nothing is downloaded), one at a time (the largest, the
editor, takes 41 GB). An evaluation runs on the inputs roles counts at the production shape, timed after a warm-up
with bf16 weights, then in fp8 as production-fp8 runs it: the editor's and the refiner's block linears multiplied in
FP8 and the blocks compiled (`likeness.models.fp8.use_fp8_matmuls`; the warm-up call compiles; a GPU without FP8
tensor cores says so and times bf16 alone), the Wan experts through diffusers' `enable_layerwise_casting` (stored
in float8_e4m3fn and computed in bf16). A training step is what likeness.training.native does at the profile's
size, rank and gradient checkpointing (`auto` decided for this GPU as the estimate decides it: off on an H100 for
production): a peft LoRA on its LORA_TARGETS in float32 under bf16 autocast, forward, backward and an AdamW step, on
the loss roles counts the step with. Each call's peak is `torch.cuda.max_memory_allocated()`, weights included.

Prints, per part and weights: measured seconds (the median of up to 5 calls) beside the estimate's (`calibrated_seconds`
at the fraction of peak it assumes), their ratio, the share of the GPU's dense peaks sustained, and peak
memory beside the estimate's (`gpus.peak_memory` with the part alone resident). The measurements go into the data
folder's gpu-calibration.json (`likeness.estimate.calibration`, where the estimate reads a measured fraction per
part), replacing earlier ones of the same GPU, part and weights.

Planned to fit well inside eight minutes on one H100 (the budget's guesses for every part add up to about 300 s;
not yet run on one). A part starts only while the budget (--gpu-budget-s, counted from the start) holds
twice its estimated seconds and a build; the parts after are skipped, saying so. The GPU is matched to an entry of
`gpus.GPUS` by RunPod's name for it, else by the entry's words (an H100 PCIe would be taken for the table's SXM
H100: the table's header names both). Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any, NamedTuple

os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402
from torch.utils import _pytree  # noqa: E402

from likeness.config import FP8_MATMUL_ROLES, RunConfig, TrainConfig  # noqa: E402
from likeness.dataset.catalogue import load_catalogue  # noqa: E402
from likeness.estimate import gpus, roles  # noqa: E402
from likeness.estimate.calibration import (  # noqa: E402
    Measurement,
    Weights,
    calibrated_seconds,
    calibration_file,
    read_calibration,
    save_measurements,
    training_part,
)
from likeness.estimate.gpus import GPUS, GpuType  # noqa: E402
from likeness.estimate.overheads import COLD_COMPILE_SECONDS  # noqa: E402
from likeness.estimate.training import LORA_STATE_BYTES, checkpointing_decided  # noqa: E402
from likeness.inputs import InvalidInput  # noqa: E402
from likeness.models import wan_flops  # noqa: E402
from likeness.models.fp8 import fp8_matmul_refusal, use_fp8_matmuls  # noqa: E402
from likeness.models.profiles import load_profile  # noqa: E402
from likeness.models.wan_lora import LORA_TARGETS  # noqa: E402
from likeness.settings import get_settings  # noqa: E402

EVALUATED = ("editor.transformer", "refiner.transformer", "video.transformer", "video-5b.transformer")
# The parts production-fp8 multiplies in FP8 (weights fp8-matmul); the others it stores in fp8.
FP8_MATMUL_PARTS = tuple(f"{role}.transformer" for role in FP8_MATMUL_ROLES)
TRAINING_PROFILES = ("production", "production-5b")
BF16_BYTES = 2
# Building the 20B editor on the GPU and freeing it takes seconds; this also covers the first CUDA calls.
BUILD_ALLOWANCE_S = 30.0
# The estimate's seconds may be this far off before a part that starts runs past the budget.
SLACK = 2.0
# Timed calls after the warm-up: as many as take about this long, one at least, MAX_RUNS at most.
TIMED_S = 10.0
MAX_RUNS = 5
LIBRARIES = ("torch", "diffusers", "transformers", "peft")


class Timing(NamedTuple):
    """What one call took: the median seconds of `runs` calls, and the most bytes allocated on the GPU meanwhile."""

    seconds: float
    runs: int
    peak_bytes: int


@dataclass(frozen=True)
class Job:
    """One part to time: its shape, the FLOPs counted for one call, what the estimate says its peak is (by how the
    weights are stored) and how to time it on a device."""

    part: str
    shape: dict[str, int]
    flops: int
    estimated_peak_bytes: dict[Weights, int]
    run: Callable[[str], dict[Weights, Timing]]
    # Of `flops`, those fp8-matmul weights run at the FP8 rate (all but the attention's); 0 where it has none.
    fp8_flops: int = 0

    def estimated_seconds(self, gpu: GpuType, weights: Weights = "bf16") -> float:
        """What the estimate says for the call at the fraction of peak it assumes (nothing measured counts)."""
        fp8 = self.fp8_flops if weights == "fp8-matmul" else 0
        return calibrated_seconds(self.flops, gpu, None, fp8_flops=fp8)

    def needed_seconds(self, gpu: GpuType) -> float:
        """A generous guess of its wall time here: the build, and per weights a warm-up (with a cold compile for
        fp8-matmul) and the timed calls."""
        call = SLACK * self.estimated_seconds(gpu)
        compiling = COLD_COMPILE_SECONDS if "fp8-matmul" in self.estimated_peak_bytes else 0.0
        return BUILD_ALLOWANCE_S + compiling + len(self.estimated_peak_bytes) * (call + max(TIMED_S, call))


# Models on a device ---------------------------------------------------------------------------------------------


def build(module: str, device: str) -> torch.nn.Module:
    """`roles`' real-size `module` on `device` in bf16, frozen, with the random weights its classes initialise."""
    # Built on the device with bf16 as the default dtype rather than on the meta device and moved: the rotary tables
    # the constructors compute (Wan's buffers, Qwen-Image's plain tensors) would not survive the move, and built on
    # the CPU in float32 the 20B editor would take 80 GB and minutes of initialisation.
    if module in wan_flops.WAN_CONFIGS:
        from diffusers import WanTransformer3DModel

        # wan_flops.meta_transformer builds on the meta device whatever the caller's device.
        def construct() -> torch.nn.Module:
            return WanTransformer3DModel(**wan_flops.WAN_CONFIGS[module])
    else:
        construct = roles._BUILDERS[module]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = construct()
    finally:
        torch.set_default_dtype(default)
    model = model.bfloat16()  # what the constructors computed in float32 or float64, as roles counts it
    model.requires_grad_(False)
    return model.eval()


class _Recorder:
    """Stands in for a model in a roles counter, keeping the inputs the counter calls it with."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append((args, kwargs))


def on_device(inputs: Any, device: str) -> Any:
    """`inputs` with each meta tensor made real on `device`: roles makes activations in bf16 (random here) and
    timesteps, guidance and position ids in other dtypes (zeros, as roles has them)."""

    def real(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.bfloat16:
            return torch.randn(tensor.shape, dtype=tensor.dtype, device=device)
        return torch.zeros(tensor.shape, dtype=tensor.dtype, device=device)

    return _pytree.tree_map_only(torch.Tensor, real, inputs)


def evaluation_call(model: torch.nn.Module, part: str, device: str, **shape: int) -> Callable[[], Any]:
    """One evaluation of `part` (`model`, on `device`) at `shape`, on the very inputs roles counts it with."""
    recorder = _Recorder(model.config)
    # roles' counter builds the inputs and calls the model on them inside its count: the recorder keeps them.
    roles._part(part)[1](recorder, **shape)
    ((args, kwargs),) = recorder.calls
    args, kwargs = on_device((args, kwargs), device)

    def call() -> Any:
        with torch.inference_mode():
            return model(*args, **kwargs)

    return call


def training_step(model: torch.nn.Module, base: str, train: TrainConfig, device: str) -> Callable[[], None]:
    """One LoRA training step of `model` (the Wan transformer `base`, on `device`) as likeness.training.native takes
    it, on one `train.size` image and the loss roles counts the step with."""
    from peft import LoraConfig

    model.add_adapter(
        LoraConfig(r=train.rank, lora_alpha=train.lora_alpha, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
    )
    if train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    for parameter in trainable:
        parameter.data = parameter.data.float()  # the trainer's float32 LoRA weights under bf16 autocast
    optimizer = torch.optim.AdamW(trainable, lr=train.learning_rate)
    inputs = on_device(wan_flops.evaluation_inputs(wan_flops.latent_shape(base, 1, train.size, train.size)), device)
    device_type = torch.device(device).type

    def step() -> None:
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = model(**inputs, return_dict=False)[0]
        out.float().square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


# Timing on CUDA -------------------------------------------------------------------------------------------------


def timed(call: Callable[[], Any]) -> Timing:
    """`call` timed after a warm-up (kernel choice, the allocator's first blocks), with the GPU's peak meanwhile."""
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    warm_up = time.perf_counter() - start
    runs = max(1, min(MAX_RUNS, int(TIMED_S // warm_up)))
    torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return Timing(statistics.median(seconds), runs, torch.cuda.max_memory_allocated())


def _time_evaluation(part: str, shape: dict[str, int], device: str) -> dict[Weights, Timing]:
    model = build(roles._part(part)[0], device)
    call = evaluation_call(model, part, device, **shape)
    timings: dict[Weights, Timing] = {"bf16": timed(call)}
    if part in FP8_MATMUL_PARTS:
        refusal = fp8_matmul_refusal(part, torch.cuda.get_device_name(), torch.cuda.get_device_capability())
        if refusal:
            print(refusal)
            return timings
        use_fp8_matmuls(model, device)
        model.compile_repeated_blocks()  # compiled at the warm-up call, as a run's first call compiles
        weights: Weights = "fp8-matmul"
    else:
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        weights = "fp8"
    torch.cuda.empty_cache()  # the bf16 weights' blocks, so the fp8 peak is the fp8 model's own
    timings[weights] = timed(call)
    return timings


def evaluation_job(part: str) -> Job:
    """One evaluation of `part` at its production shape, in bf16 and in fp8 as production-fp8 runs it."""
    shape = roles.production_shape(part)
    counted = roles.evaluation(part)
    parameters, activations = {part: roles.parameter_count(part)}, {part: counted.activation_bytes}
    fp8: Weights = "fp8-matmul" if part in FP8_MATMUL_PARTS else "fp8"
    return Job(
        part,
        shape,
        counted.flops,
        {
            "bf16": gpus.peak_memory(parameters, activations, BF16_BYTES, "none"),
            fp8: gpus.peak_memory(parameters, activations, BF16_BYTES, "fp8"),
        },
        lambda device: _time_evaluation(part, shape, device),
        fp8_flops=counted.flops - counted.attention_flops if fp8 == "fp8-matmul" else 0,
    )


def training_job(train: TrainConfig) -> Job:
    """One LoRA training step on `train.base` as `train` configures it."""
    step = roles.lora_training_step(train.base, train.size, train.rank, train.gradient_checkpointing)
    # As the estimate's training stage has it: the base in bf16, the step's tensors, and the LoRA's float32 weights,
    # gradients and AdamW moments.
    peak = gpus.peak_memory(
        {"transformer": step["parameters"]},
        {"transformer": step["activation_bytes"]},
        BF16_BYTES,
        "none",
        state_bytes=step["lora_parameters"] * LORA_STATE_BYTES,
    )
    shape = {
        "frames": 1, "width": train.size, "height": train.size, "rank": train.rank,
        "gradient_checkpointing": int(train.gradient_checkpointing),
    }  # fmt: skip

    def run(device: str) -> dict[Weights, Timing]:
        model = build(train.base, device)
        return {"bf16": timed(training_step(model, train.base, train, device))}

    return Job(training_part(train.base), shape, step["step"], {"bf16": peak}, run)


def training_configs(gpu: GpuType | None = None) -> dict[str, TrainConfig]:
    """The training of each profile in TRAINING_PROFILES, by its part name (one per base), with gradient
    checkpointing `auto` decided as `likeness estimate` decides it for `gpu` (on, where it is None)."""
    configs = {}
    for name in TRAINING_PROFILES:
        profile = load_profile(name)
        config = RunConfig.from_profile(profile, {})
        shots = load_catalogue().shots(config.dataset.variations, garments=0, poses=0)
        memory = gpu.memory_gib * 2**30 if gpu is not None else None
        train = checkpointing_decided(config.train, len(shots), profile, memory)
        configs[training_part(train.base)] = train
    return configs


# What is reported -----------------------------------------------------------------------------------------------


def gpu_entry(device_name: str) -> GpuType | None:
    """The entry of `gpus.GPUS` for `device_name` as `torch.cuda.get_device_name()` gives it: the one RunPod names
    so, else the one whose name's words all appear in it ("A100 80GB" in "NVIDIA A100-SXM4-80GB"); None: no entry."""
    named = next((gpu for gpu in GPUS.values() if gpu.runpod_id == device_name), None)
    if named is not None:
        return named
    words = set(re.split(r"[^A-Z0-9]+", device_name.upper()))
    return next((gpu for gpu in GPUS.values() if set(gpu.name.upper().split()) <= words), None)


def measurements_of(
    job: Job, timings: dict[Weights, Timing], gpu: GpuType, device_name: str, when: datetime
) -> list[Measurement]:
    """`job`'s timings as the calibration file keeps them, with what the estimate says beside each."""
    libraries = {library: metadata.version(library) for library in LIBRARIES}
    return [
        Measurement(
            gpu=gpu.name,
            device_name=device_name,
            part=job.part,
            weights=weights,
            shape=job.shape,
            flops=job.flops,
            fp8_flops=job.fp8_flops if weights == "fp8-matmul" else 0,
            seconds=timing.seconds,
            runs=timing.runs,
            peak_bytes=timing.peak_bytes,
            estimated_seconds=job.estimated_seconds(gpu, weights),
            estimated_peak_bytes=job.estimated_peak_bytes[weights],
            measured_at=when,
            libraries=libraries,
        )  # fmt: skip
        for weights, timing in timings.items()
    ]


COLUMNS = (
    ("part", 30), ("weights", 8), ("measured s", 11), ("estimate s", 11), ("measured/est", 13), ("TFLOP/s", 8),
    ("of peak", 8), ("peak GiB", 9), ("estimate GiB", 13),
)  # fmt: skip


def _line(cells: Sequence[str]) -> str:
    # The names left-aligned, the figures right-aligned.
    return "".join(
        f"{cell:<{width}}" if index < 2 else f"{cell:>{width}}"
        for index, (cell, (_, width)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


def table_header() -> str:
    return _line([name for name, _ in COLUMNS])


def table_row(m: Measurement) -> str:
    """One measurement: seconds and peak memory, measured and estimated, and the share of the GPU's dense bf16 peak
    sustained."""
    return _line([
        m.part, m.weights, f"{m.seconds:.3f}", f"{m.estimated_seconds:.3f}", f"{m.seconds / m.estimated_seconds:.2f}",
        f"{m.flops / m.seconds / 1e12:.0f}", f"{m.fraction:.3f}", f"{m.peak_bytes / 2**30:.1f}",
        f"{m.estimated_peak_bytes / 2**30:.1f}",
    ])  # fmt: skip


def calibration_table(measurements: Sequence[Measurement]) -> str:
    return "\n".join([table_header(), *map(table_row, measurements)])


# The run --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    trainings = training_configs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-budget-s", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument(
        "--parts", nargs="+", choices=[*EVALUATED, *trainings], default=[*EVALUATED, *trainings],
        help="the parts to time, in this order (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    if not torch.cuda.is_available():
        print(f"no CUDA GPU here (torch {torch.__version__}): nothing to calibrate; run this on a machine with one")
        return 0
    device_name = torch.cuda.get_device_name()
    gpu = gpu_entry(device_name)
    if gpu is None:
        print(f"{device_name} is no GPU of likeness.estimate.gpus.GPUS ({', '.join(GPUS)}): add it there first")
        return 2
    trainings = training_configs(gpu)
    path = calibration_file()
    try:
        read_calibration(path)  # a file that cannot take the results fails now, not after minutes on the GPU
    except InvalidInput as exc:
        print(exc, file=sys.stderr)
        return 1
    roles.keep_counts_in(get_settings().estimate_counts_file)
    print(f"{device_name}, as the estimate's {gpu.name} ({gpu.bf16_tflops:,.0f} TFLOP/s dense bf16); the estimate "
          f"assumes {gpus.calibration().factor:.3f} of that peak", flush=True)  # fmt: skip
    print(table_header())
    measured: list[Measurement] = []
    for part in args.parts:
        job = training_job(trainings[part]) if part in trainings else evaluation_job(part)
        left = args.gpu_budget_s - (time.monotonic() - started)
        if job.needed_seconds(gpu) > left:
            print(f"skipped {part}: it may take {job.needed_seconds(gpu):.0f} s, {left:.0f} s of the budget left")
            continue
        print(f"timing {part} at {job.shape} ...", flush=True)
        try:
            timings = job.run("cuda")
        except torch.cuda.OutOfMemoryError as exc:
            # Not fitting where the estimate says it fits is a finding too: said, and the next part goes on.
            estimate = max(job.estimated_peak_bytes.values()) / 2**30
            print(f"{part} ran out of GPU memory (estimated peak {estimate:.1f} GiB): {str(exc).splitlines()[0]}")
            continue
        finally:
            gc.collect()  # the model goes with the job's closures (or the exception): free it before the next
            torch.cuda.empty_cache()
        new = measurements_of(job, timings, gpu, device_name, datetime.now(UTC))
        save_measurements(path, new)  # part by part, so a later failure keeps what was measured
        measured += new
        for measurement in new:
            print(table_row(measurement), flush=True)
    if not measured:
        print("nothing measured")
        return 0
    print(calibration_table(measured))
    print(f"kept {len(measured)} measurements in {path} (in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
