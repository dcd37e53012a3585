"""The GPU calibration: the bench without CUDA, its table and file on made-up measurements, the file read back for the
estimate (and refused, naming it, when malformed or too large), and the bench's models run on the CPU at tiny size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from bench import gpu_calibrate
from likeness.estimate import roles
from likeness.estimate.calibration import (
    MAX_CALIBRATION_FILE_BYTES,
    CalibrationFileProblem,
    calibrated_fraction,
    calibrated_seconds,
    read_calibration,
    save_measurements,
    training_part,
)
from likeness.estimate.gpus import GPUS, seconds
from likeness.models import wan_flops
from likeness.models.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
H100 = GPUS["H100"]
WHEN = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
FLOPS = 2_345_000_000_000_000  # about one 14B expert's evaluation at 704x704, 81 frames


@pytest.fixture(scope="module", autouse=True)
def kept_counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The estimate's assumed fraction from the packaged counts rather than counted here."""
    roles.keep_counts_in(tmp_path_factory.mktemp("likeness-data") / "estimate-counts.json")
    yield
    roles.keep_counts_in(None)


def made_up_job(part: str = "video.transformer") -> gpu_calibrate.Job:
    def never(device: str) -> dict:
        raise AssertionError("made-up measurements are not timed")

    return gpu_calibrate.Job(
        part, {"frames": 81, "width": 704, "height": 704}, FLOPS, {"bf16": 33 * 2**30, "fp8": 19 * 2**30}, never
    )


def made_up_measurements() -> list:
    timings = {"bf16": gpu_calibrate.Timing(4.0, 2, 34 * 2**30), "fp8": gpu_calibrate.Timing(4.4, 2, 21 * 2**30)}
    return gpu_calibrate.measurements_of(made_up_job(), timings, H100, "NVIDIA H100 80GB HBM3", WHEN)


def test_the_bench_says_there_is_no_cuda_and_exits_0(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the bench would measure")
    env = {**os.environ, "LIKENESS_DATA_DIR": str(tmp_path / "likeness-data")}
    done = subprocess.run(
        [sys.executable, "bench/gpu_calibrate.py", "--parts", "video.transformer"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [done.stdout.strip()] and "no CUDA GPU here" in done.stdout
    assert not (tmp_path / "likeness-data").exists()


def test_measurements_carry_the_estimate_and_make_a_table() -> None:
    bf16, fp8 = made_up_measurements()
    assert (bf16.weights, fp8.weights) == ("bf16", "fp8")
    assert bf16.estimated_seconds == pytest.approx(seconds(FLOPS, H100))
    assert (bf16.estimated_peak_bytes, fp8.estimated_peak_bytes) == (33 * 2**30, 19 * 2**30)
    assert bf16.fraction == pytest.approx(FLOPS / 4.0 / 989.4e12)
    header, *rows = gpu_calibrate.calibration_table([bf16, fp8]).splitlines()
    assert header.split()[:3] == ["part", "weights", "measured"]
    assert rows[0].split() == [
        "video.transformer", "bf16", "4.000", f"{bf16.estimated_seconds:.3f}",
        f"{4.0 / bf16.estimated_seconds:.2f}", "586", f"{bf16.fraction:.3f}", "34.0", "33.0",
    ]  # fmt: skip
    assert rows[1].split()[1:3] == ["fp8", "4.400"] and rows[1].split()[-2:] == ["21.0", "19.0"]


def test_the_file_round_trips_to_a_fraction_and_seconds(tmp_path: Path) -> None:
    path = tmp_path / "gpu-calibration.json"
    bf16, fp8 = made_up_measurements()
    save_measurements(path, [bf16, fp8])
    kept = json.loads(path.read_text())
    assert kept["version"] == 1 and [m["weights"] for m in kept["measurements"]] == ["bf16", "fp8"]
    assert kept["measurements"][0]["part"] == "video.transformer" and kept["measurements"][0]["flops"] == FLOPS
    assert read_calibration(path).measurements == (bf16, fp8)

    assert calibrated_fraction("H100", "video.transformer", path=path) == pytest.approx(FLOPS / 4.0 / 989.4e12)
    assert calibrated_fraction("H100", "video.transformer", "fp8", path) == pytest.approx(FLOPS / 4.4 / 989.4e12)
    assert calibrated_fraction("H200", "video.transformer", path=path) is None
    assert calibrated_fraction("H100", "editor.transformer", path=path) is None
    # At its measured fraction, the measured call takes the measured seconds; unmeasured, the assumed fraction.
    assert calibrated_seconds(FLOPS, H100, "video.transformer", path) == pytest.approx(4.0)
    assert calibrated_seconds(FLOPS, H100, "editor.transformer", path) == pytest.approx(seconds(FLOPS, H100))
    assert calibrated_seconds(FLOPS, H100, None, path) == pytest.approx(seconds(FLOPS, H100))
    assert calibrated_fraction("H100", "video.transformer", path=tmp_path / "none.json") is None

    # A later run replaces the same GPU, part and weights and keeps the rest.
    again = bf16.model_copy(update={"seconds": 5.0})
    step = bf16.model_copy(update={"part": training_part("wan22_14b"), "shape": {"frames": 1}})
    assert save_measurements(path, [again, step]).measurements == (fp8, again, step)
    assert calibrated_fraction("H100", "video.transformer", path=path) == pytest.approx(FLOPS / 5.0 / 989.4e12)


def test_the_default_file_is_in_the_data_folder(likeness_env: Path) -> None:
    save_measurements(likeness_env / "gpu-calibration.json", made_up_measurements())
    assert calibrated_fraction("H100", "video.transformer") == pytest.approx(FLOPS / 4.0 / 989.4e12)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not JSON"),
        (b"\x80\x81", "is not text"),
        (b'{"version": 2}', "version"),
        (b'{"measurements": [{"gpu": "H100"}]}', "measurements.0.part: Field required"),
        (b"[]", "is no GPU calibration"),
    ],
)
def test_a_malformed_file_is_refused_naming_it(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "gpu-calibration.json"
    path.write_bytes(content)
    with pytest.raises(CalibrationFileProblem, match=problem) as caught:
        calibrated_fraction("H100", "video.transformer", path=path)
    assert str(caught.value).startswith(f"GPU calibration file {path}: ")


def test_measurements_that_make_no_sense_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "gpu-calibration.json"
    good = json.loads(made_up_measurements()[0].model_dump_json())
    for change, problem in [
        ({"gpu": "T4"}, "unknown GPU 'T4'"),
        ({"part": "video.transformr"}, "unknown part 'video.transformr'"),
        ({"seconds": 0}, "measurements.0.seconds: Input should be greater than 0"),
        ({"weights": "int4"}, "measurements.0.weights"),
    ]:
        path.write_text(json.dumps({"version": 1, "measurements": [{**good, **change}]}))
        with pytest.raises(CalibrationFileProblem, match=problem):
            read_calibration(path)
    path.write_text(json.dumps({"version": 1, "measurements": [good, good]}))
    with pytest.raises(CalibrationFileProblem, match="measured more than once: H100/video.transformer/bf16"):
        read_calibration(path)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "gpu-calibration.json"
    path.write_bytes(b" " * (MAX_CALIBRATION_FILE_BYTES + 1))
    with pytest.raises(CalibrationFileProblem) as caught:
        read_calibration(path)
    assert str(caught.value) == (
        f"GPU calibration file {path}: is 1,048,577 bytes; "
        "a GPU calibration file may be at most 1,048,576 bytes (1 MiB)"
    )


def test_a_device_name_finds_its_entry_of_the_gpu_table() -> None:
    names = {
        "NVIDIA H100 80GB HBM3": "H100",
        "NVIDIA H200": "H200",
        "NVIDIA A100-SXM4-80GB": "A100 80GB",
        "NVIDIA A100 80GB PCIe": "A100 80GB",
        "NVIDIA GeForce RTX 4090": "RTX 4090",
        "NVIDIA L40S": "L40S",
    }
    for device_name, entry in names.items():
        gpu = gpu_calibrate.gpu_entry(device_name)
        assert gpu is not None and gpu.name == entry, device_name
    assert gpu_calibrate.gpu_entry("NVIDIA A100-SXM4-40GB") is None
    assert gpu_calibrate.gpu_entry("Tesla T4") is None


# The bench's models on the CPU: the production classes at one block of one head, on the inputs roles counts at a
# tiny shape, as the bench builds and calls them on a GPU (where only the size and the timing differ).
TINY_SHAPES = {
    "editor.transformer": {
        "width": 64, "height": 64, "conditions": 1, "condition_area": 64 * 64, "vl_condition_area": 3136,
        "prompt_tokens": 8,
    },
    "refiner.transformer": {"width": 64, "height": 64},
    "video.transformer": {"frames": 5, "width": 64, "height": 64},
    "video-5b.transformer": {"frames": 5, "width": 64, "height": 64},
}  # fmt: skip


@pytest.fixture
def one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(roles.QWEN_IMAGE_EDIT_TRANSFORMER, "num_attention_heads", 1)
    monkeypatch.setitem(roles.QWEN_IMAGE_EDIT_TRANSFORMER, "num_layers", 1)
    for name, value in {"num_attention_heads": 1, "num_layers": 1, "num_single_layers": 1}.items():
        monkeypatch.setitem(roles.FLUX_DEV_TRANSFORMER, name, value)
    for base, config in wan_flops.WAN_CONFIGS.items():
        monkeypatch.setitem(
            wan_flops.WAN_CONFIGS, base, {**config, "num_attention_heads": 1, "num_layers": 1, "ffn_dim": 256}
        )


@pytest.mark.usefixtures("one_block")
def test_the_bench_builds_and_calls_each_transformer_on_the_inputs_roles_counts() -> None:
    for part, shape in TINY_SHAPES.items():
        model = gpu_calibrate.build(roles._part(part)[0], "cpu")
        assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}, part
        call = gpu_calibrate.evaluation_call(model, part, "cpu", **shape)
        expected = call()[0].shape
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
        assert torch.float8_e4m3fn in {parameter.dtype for parameter in model.parameters()}, part
        out = call()[0]
        assert out.shape == expected and torch.isfinite(out.float()).all(), part


@pytest.mark.usefixtures("one_block")
def test_the_bench_multiplies_the_editor_and_the_refiner_in_fp8() -> None:
    from likeness.models.fp8 import Fp8Linear, use_fp8_matmuls

    assert gpu_calibrate.FP8_MATMUL_PARTS == ("editor.transformer", "refiner.transformer")
    for part in gpu_calibrate.FP8_MATMUL_PARTS:
        model = gpu_calibrate.build(roles._part(part)[0], "cpu")
        call = gpu_calibrate.evaluation_call(model, part, "cpu", **TINY_SHAPES[part])
        expected = call()[0]
        replaced, kept = use_fp8_matmuls(model, "cpu")
        assert replaced == sum(isinstance(module, Fp8Linear) for module in model.modules()) > 0 and kept == 0, part
        out = call()[0]
        assert out.shape == expected.shape and torch.isfinite(out.float()).all(), part


def test_fp8_matmul_timings_calibrate_the_fp8_work(tmp_path: Path) -> None:
    refiner = gpu_calibrate.evaluation_job("refiner.transformer")
    video = gpu_calibrate.evaluation_job("video.transformer")
    assert set(refiner.estimated_peak_bytes) == {"bf16", "fp8-matmul"} and set(video.estimated_peak_bytes) == {
        "bf16", "fp8"
    }  # fmt: skip
    counted = roles.evaluation("refiner.transformer")
    assert refiner.fp8_flops == counted.flops - counted.attention_flops > 0 and video.fp8_flops == 0
    # The estimate for fp8-matmul: the attention at the bf16 peak, the rest at the FP8 peak.
    expected = seconds(counted.attention_flops, H100) + seconds(refiner.fp8_flops, H100, "fp8")
    assert refiner.estimated_seconds(H100, "fp8-matmul") == pytest.approx(expected)
    assert expected < refiner.estimated_seconds(H100)
    timings = {"bf16": gpu_calibrate.Timing(2.0, 2, 30 * 2**30), "fp8-matmul": gpu_calibrate.Timing(1.5, 2, 18 * 2**30)}
    bf16, fp8 = gpu_calibrate.measurements_of(refiner, timings, H100, "NVIDIA H100 80GB HBM3", WHEN)
    assert (bf16.fp8_flops, fp8.fp8_flops) == (0, refiner.fp8_flops)
    # Its share: what it would take at the peaks over what it took.
    assert fp8.fraction == pytest.approx((counted.attention_flops / 989.4e12 + refiner.fp8_flops / 1978.9e12) / 1.5)
    path = tmp_path / "gpu-calibration.json"
    save_measurements(path, [bf16, fp8])
    # FP8 work runs at the share the fp8-matmul run measured; bf16 work at the bf16 run's.
    fp8_seconds = calibrated_seconds(counted.flops, H100, "refiner.transformer", path, fp8_flops=refiner.fp8_flops)
    assert fp8_seconds == pytest.approx(1.5)
    assert calibrated_seconds(counted.flops, H100, "refiner.transformer", path) == pytest.approx(2.0)


@pytest.mark.usefixtures("one_block")
def test_the_bench_trains_the_lora_through_gradient_checkpointing() -> None:
    train = load_profile("production").train.model_copy(update={"size": 64, "gradient_checkpointing": True})
    model = gpu_calibrate.build(train.base, "cpu")
    step = gpu_calibrate.training_step(model, train.base, train, "cpu")
    lora = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in name and p.dtype == torch.float32 for name, p in lora.items())
    step()
    assert model.is_gradient_checkpointing
    moved = [name for name, p in model.named_parameters() if p.requires_grad and not torch.equal(p, lora[name])]
    assert any("lora_B" in name for name in moved)  # B starts at zero: it moves only if gradients reached it


def test_each_training_step_is_timed_with_checkpointing_decided_as_the_estimate_decides_it() -> None:
    # production's `auto`: off where training without it keeps the experts resident, on where it would not, and on
    # where the GPU is not known.
    part = "lora_training_step:wan22_14b"
    decided = [
        gpu_calibrate.training_configs(gpu)[part].gradient_checkpointing
        for gpu in (GPUS["H100"], GPUS["RTX 4090"], None)
    ]
    assert decided == [False, True, True]
    job = gpu_calibrate.training_job(gpu_calibrate.training_configs(GPUS["H100"])[part])
    assert job.shape["gradient_checkpointing"] == 0


def test_the_estimate_times_a_stage_at_the_share_its_part_measured(likeness_env: Path) -> None:
    from likeness.estimate.character import _on_gpu
    from likeness.estimate.gpus import price_per_hour
    from likeness.estimate.work import Count, Work

    work = Work("renders", parameters={"transformer": 10**9}, calibrated_part="video.transformer")
    work.add(Count(flops=100 * FLOPS))
    price = price_per_hour(H100, None)
    assumed = _on_gpu(work, H100, price, "auto")
    assert assumed.seconds == pytest.approx(seconds(100 * FLOPS, H100))
    # The bench measured one expert's pass in 4.0 s where the assumed share says about 4.7 s: the stage follows.
    save_measurements(likeness_env / "gpu-calibration.json", made_up_measurements())
    measured = _on_gpu(work, H100, price, "auto")
    assert measured.seconds == pytest.approx(100 * 4.0)
    assert measured.usd == pytest.approx(assumed.usd * 400 / assumed.seconds)
