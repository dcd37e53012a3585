"""The estimate of a character follows its settings: steps, CFG, frames and the catalogue move it as they must."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from likeness.config import ModelProfile, RunConfig
from likeness.dataset.catalogue import load_catalogue
from likeness.estimate import roles
from likeness.estimate.character import estimate_character
from likeness.estimate.gpus import GPUS, price_per_hour, seconds
from likeness.models.profiles import load_profile
from likeness.run.outputs import MANIFEST, RECORD_FORMAT
from tests.prefect_server import api_post

# The production shapes' counts come packaged (likeness/estimate/counts.json); the shapes these tests change are
# counted on the meta device once, into the module's count file, which the CLI's process reads too.
pytestmark = pytest.mark.slow

PROFILE = load_profile("production")
# Two shots keep the meta-device counts to a few shapes.
SMALL = {"dataset": {"variations": ["front", "face"]}}
STAGES = ["dataset: edit", "dataset: upscale + refine", "dataset: caption", "training", "renders", "strength probe"]


@pytest.fixture(scope="module", autouse=True)
def counts_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The data folder whose estimate-counts.json this module's counts are kept in."""
    folder = tmp_path_factory.mktemp("likeness-data")
    roles.keep_counts_in(folder / "estimate-counts.json")
    yield folder
    roles.keep_counts_in(None)


def stages(overrides: dict | None = None, gpu: str = "H100") -> dict:
    config = RunConfig.from_profile(PROFILE, {**SMALL, **(overrides or {})}, beyond_limits=True)
    rows = estimate_character(PROFILE, config, load_catalogue(), GPUS[gpu], price_per_hour(GPUS[gpu], None))
    return {row.stage: row for row in rows}


def merged(*trees: dict) -> dict:
    out: dict = {}
    for tree in trees:
        for key, value in tree.items():
            out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def test_every_stage_is_estimated_with_positive_figures():
    rows = stages()
    assert list(rows) == [*STAGES, "model loading"]
    for stage in STAGES:
        row = rows[stage]
        assert row.evaluations > 0 and row.flops > 0 and row.seconds > 0 and row.usd > 0
        assert row.memory_mode in ("none", "model", "sequential")
    assert rows["dataset: edit"].evaluations == 2 * PROFILE.edit.steps
    # `auto` on an H100: every stage's models fit resident, so nothing is moved in at each call.
    assert [rows[stage].memory_mode for stage in STAGES] == ["none"] * 6
    assert all(rows[stage].offload_seconds == 0 for stage in STAGES)
    edit = rows["dataset: edit"]
    assert edit.seconds == pytest.approx(seconds(edit.flops, GPUS["H100"]))


def test_a_role_held_by_model_offload_pays_its_copies_at_every_call():
    # The editor named to model offload moves each edit's parts in (the 20B transformer, Qwen2.5-VL, the VAE: 57.6 GB)
    # over PCIe 5, once a pipeline call; the rest stays on `auto`.
    data = PROFILE.model_dump(mode="json")
    data["models"]["editor"]["offload"] = "model"
    profile = ModelProfile.model_validate(data)
    config = RunConfig.from_profile(profile, SMALL, beyond_limits=True)
    h100 = GPUS["H100"]
    rows = {r.stage: r for r in estimate_character(profile, config, load_catalogue(), h100, price_per_hour(h100, None))}
    edit = rows["dataset: edit"]
    assert edit.memory_mode == "model" and rows["dataset: upscale + refine"].memory_mode == "none"
    moved = 2 * sum(roles.parameter_count(f"editor.{part}") for part in ("transformer", "text_encoder", "vae_decode"))
    assert edit.offload_seconds == pytest.approx(2 * moved / 50e9)  # two shots
    assert edit.seconds == pytest.approx(edit.offload_seconds + seconds(edit.flops, GPUS["H100"]))
    assert rows["training"].offload_seconds == 0 and rows["dataset: caption"].offload_seconds == 0


def test_the_strength_probe_renders_a_still_a_pair_and_seed_and_none_without_identity():
    rows = stages()
    probe, renders = rows["strength probe"], rows["renders"]
    # 4 character strengths x 2 speed strengths x 2 seeds, each a 4-step still without CFG.
    assert probe.evaluations == 4 * 2 * 2 * PROFILE.render.steps
    assert probe.memory_mode == renders.memory_mode
    unscored = stages(merged(SMALL, {"dataset": {"curation": {"identity": False}}}))
    assert "strength probe" not in unscored
    assert "strength probe" not in stages({"render": {"probe": {"enabled": False}}})


def test_loading_is_read_once_a_stage_and_a_pod_pays_its_start():
    h100 = GPUS["H100"]
    price = price_per_hour(h100, None)
    config = RunConfig.from_profile(PROFILE, SMALL, beyond_limits=True)

    def rows(**kwargs) -> dict:
        return {r.stage: r for r in estimate_character(PROFILE, config, load_catalogue(), h100, price, **kwargs)}

    def weight_bytes(*role_parts: str) -> int:
        return 2 * sum(roles.parameter_count(part) for part in role_parts)

    editor = weight_bytes("editor.transformer", "editor.text_encoder", "editor.vae_decode")
    refiner = weight_bytes(
        "refiner.transformer", "refiner.text_encoder", "refiner.text_encoder_2", "refiner.vae_decode", "upscaler"
    )
    captioner = weight_bytes("captioner")
    video = weight_bytes("video.transformer", "video.transformer", "video.text_encoder", "video.vae_decode")
    # Resident models are read from disk (2 GB/s) and copied to the GPU once (50 GB/s); in one process renders find
    # the video model local training loaded.
    read = editor + refiner + captioner + video
    here = rows()
    assert here["model loading"].seconds == pytest.approx(read / 2e9 + read / 50e9)
    assert here["model loading"].evaluations == 0 and "pod start" not in here
    # Deployment runs start a process a stage: renders read it again.
    assert rows(process_per_stage=True)["model loading"].seconds == pytest.approx((read + video) * (1 / 2e9 + 1 / 50e9))
    # On a pod, training reads its base model there, after the pod boots (120 s) and downloads it (0.5 GB/s).
    pod = rows(backend="runpod-native")
    assert pod["model loading"].seconds == pytest.approx(
        (read - video) * (1 / 2e9 + 1 / 50e9) + video / 2e9 + video / 50e9
    )
    assert pod["pod start"].seconds == pytest.approx(120 + video / 0.5e9 + video / 2e9)
    assert pod["pod start"].usd == pytest.approx(pod["pod start"].seconds * price.usd_per_hour / 3600)


def test_curation_tries_and_the_guard_bound_the_most_a_stage_costs():
    rows = stages()
    tries = PROFILE.dataset.curation.max_tries
    edit, refine = rows["dataset: edit"], rows["dataset: upscale + refine"]
    assert edit.most_flops == pytest.approx(tries * edit.flops)
    assert edit.most_seconds == pytest.approx(tries * edit.seconds)
    # The guard refines most when every start step keeps the face: more than the mean of its outcomes.
    assert refine.most_flops > refine.flops
    for stage in ("dataset: caption", "training", "renders"):
        assert rows[stage].most_flops == rows[stage].flops
    once = stages(merged(SMALL, {"dataset": {"curation": {"max_tries": 1}}}))["dataset: edit"]
    assert once.most_flops == pytest.approx(once.flops) and once.flops == pytest.approx(edit.flops)
    # Without identity (--no-identity) nothing guards the face: one refine from the configured start step.
    unguarded = stages(merged(SMALL, {"dataset": {"curation": {"identity": False}}}))["dataset: upscale + refine"]
    assert unguarded.flops == unguarded.most_flops < refine.flops


def test_activations_and_what_a_trainer_keeps_count_in_the_peak():
    rows = stages()
    renders = rows["renders"]
    # Resident: both A14B experts, UMT5-XXL and the VAE, with the activations of the part at work that takes most:
    # the VAE decoding the 81-frame clip, more than an expert's pass over it (some GB each).
    expert, decode = roles.evaluation("video.transformer"), roles.evaluation("video.vae_decode")
    weights = 2 * roles.parameter_count("video.transformer") + roles.parameter_count("video.text_encoder")
    weights += roles.parameter_count("video.vae_decode")
    assert renders.peak_bytes == 2 * weights + decode.activation_bytes
    assert 2e9 < expert.activation_bytes < decode.activation_bytes < 10e9
    # The trainer on an H100, without gradient checkpointing (`auto`): both experts and the VAE resident, one step's
    # tensors, the LoRAs' AdamW state; UMT5-XXL waits in CPU memory once it has encoded, before any of those exist.
    step = roles.lora_training_step("wan22_14b", PROFILE.train.size, PROFILE.train.rank, False)
    weights = 2 * step["parameters"] + roles.parameter_count("video.vae_decode")
    encoder = roles.parameter_count("video.text_encoder")
    training = rows["training"]
    assert training.peak_bytes == 2 * weights + step["activation_bytes"] + 2 * step["lora_parameters"] * 16
    assert training.peak_bytes > 2 * (weights + encoder)  # more than the moment every part is resident


def test_steps_and_cfg_multiply_the_edit():
    base = stages()["dataset: edit"]
    twice = stages(merged(SMALL, {"dataset": {"edit": {"steps": 2 * PROFILE.edit.steps}}}))["dataset: edit"]
    assert twice.evaluations == 2 * base.evaluations
    assert 1.9 < twice.flops / base.flops <= 2.0  # the text encoder and the VAE run once an edit either way
    cfg = stages(merged(SMALL, {"dataset": {"edit": {"true_cfg_scale": 4.0}}}))["dataset: edit"]
    assert cfg.evaluations == 2 * base.evaluations


def test_frames_and_the_catalogue_move_the_estimate():
    base = stages()
    longer = stages({"render": {"video_frames": 2 * PROFILE.render.video_frames - 1}})
    assert longer["renders"].flops > 1.9 * base["renders"].flops / 2  # the video dominates, attention grows faster
    assert longer["renders"].flops > base["renders"].flops
    one_shot = stages({"dataset": {"variations": ["front"]}})
    assert one_shot["dataset: edit"].evaluations == base["dataset: edit"].evaluations // 2
    assert one_shot["dataset: caption"].evaluations == 1


def test_a_smaller_gpu_takes_longer_and_pays_for_offload():
    h100, rtx = stages(gpu="H100"), stages(gpu="RTX 4090")
    assert rtx["training"].seconds > 3 * h100["training"].seconds
    assert h100["dataset: edit"].memory_mode == "none" and rtx["dataset: edit"].memory_mode == "sequential"
    # A 14B expert does not fit 24 GB: it streams in at every pass of every step (forward, recompute, backward).
    training = rtx["training"]
    assert training.memory_mode == "sequential"
    expert_bytes = 2 * roles.parameter_count("video.transformer")
    assert training.offload_seconds >= 3 * PROFILE.train.steps * expert_bytes / 25e9
    assert training.seconds == pytest.approx(training.offload_seconds + seconds(training.flops, GPUS["RTX 4090"]))


def test_the_estimate_command_prints_a_table_per_stage_and_the_last_runs_measured_seconds(
    counts_dir: Path, tmp_path: Path
):
    stages()  # the counts, in the module's count file for the command to read
    out = tmp_path / "ada"
    command = [str(Path(sys.executable).parent / "likeness"), "estimate", "Ada", "--profile", "production",
               "--set", "dataset.variations=[front,face]", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "LIKENESS_DATA_DIR": str(counts_dir)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    for word in ("training", "renders", "character", "price table of", "of which offload", "at most"):
        assert word in done.stdout
    assert "measured" not in done.stdout  # no run in that folder yet
    # A run that ran on a GPU left its estimate and the seconds its stages took.
    out.mkdir()
    estimate = [
        {"stage": stage, "gpu": "H100", "evaluations": 4, "tflop": 1.0, "seconds": seconds, "peak_gib": 1.0,
         "memory_mode": "none", "usd": 0.01, "most_seconds": 2 * seconds, "most_usd": 0.02}
        for stage, seconds in (("dataset: edit", 40.0), ("dataset: upscale + refine", 60.0), ("training", 300.0))
    ]  # fmt: skip
    record = {"identity": {"format": RECORD_FORMAT}, "estimate": estimate,
              "last_run": {"stage_seconds": {"dataset": 150.0, "training": 330.0}}}  # fmt: skip
    (out / MANIFEST).write_text(json.dumps(record))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    measured = done.stdout[done.stdout.index("measured beside its estimate") :]
    assert "dataset" in measured and "1.50" in measured  # 150 s against 40 + 60
    assert "training" in measured and "1.10" in measured
    # A folder whose record cannot be read: the estimate stands, and the reason its seconds are missing is given.
    (out / MANIFEST).write_text("{")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and "character" in done.stdout
    assert "no measured seconds" in done.stderr and "cannot trust" in done.stderr


def test_a_gpu_run_is_estimated_at_its_start_as_a_table_artifact(prefect_api, tmp_path):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from tasks.estimate import estimate_run

    config = RunConfig.from_profile(PROFILE, SMALL)

    @flow
    def priced() -> tuple:
        return estimate_run("Ada", PROFILE, config, load_catalogue())

    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path}):
        costs = priced()
    assert [cost.stage for cost in costs][-4:] == ["training", "renders", "strength probe", "model loading"]
    assert all(cost.gpu == "H100" and cost.usd > 0 for cost in costs)
    (artifact,) = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["ada-estimate"]}}})
    rows = json.loads(artifact["data"])
    assert [row["stage"] for row in rows] == [cost.stage for cost in costs]
    assert "price table of" in artifact["description"]


def test_the_5b_profile_renders_with_the_5b_and_tiny_twins_are_refused():
    five_b = load_profile("production-5b")
    config = RunConfig.from_profile(five_b, SMALL)
    h100 = GPUS["H100"]
    rows = {r.stage: r for r in estimate_character(five_b, config, load_catalogue(), h100, price_per_hour(h100, None))}
    assert rows["renders"].evaluations == sum(  # 30 steps with CFG for each render
        2 * five_b.render.steps for _ in (*five_b.render.image_prompts, *five_b.render.video_prompts)
    )
    assert rows["renders"].peak_bytes < stages()["renders"].peak_bytes  # one 5B against two 14B experts
    tiny = load_profile("tiny")
    with pytest.raises(ValueError, match="runs tiny twins"):
        estimate_character(tiny, RunConfig.from_profile(tiny), load_catalogue(), h100, price_per_hour(h100, None))


def test_a_gpu_run_ends_with_the_seconds_its_stages_took_beside_the_estimate(prefect_api, tmp_path):
    import time

    from prefect import flow
    from prefect.settings import PREFECT_API_URL, PREFECT_RESULTS_LOCAL_STORAGE_PATH, temporary_settings

    from likeness.records import StageCost
    from tasks.estimate import measure_run

    estimate = tuple(
        StageCost(stage=stage, gpu="H100", evaluations=1, tflop=1.0, seconds=0.1, peak_gib=1.0, memory_mode="none",
                  usd=0.01, most_seconds=0.3, most_usd=0.03)
        for stage in ("dataset: edit", "dataset: caption", "training")
    )  # fmt: skip

    @flow(name="build-dataset")
    def dataset_stage() -> None:
        time.sleep(0.5)

    @flow
    def produced() -> list:
        dataset_stage()
        return measure_run("Ada", estimate)

    with temporary_settings({PREFECT_API_URL: prefect_api, PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path}):
        (measured,) = produced()
    # Only the dataset ran: its two rows' estimate beside the seconds the server timed its flow run.
    assert (measured.stage, measured.estimated_seconds, measured.most_seconds) == ("dataset", 0.2, 0.6)
    assert measured.measured_seconds >= 0.5
    (artifact,) = api_post(prefect_api, "/artifacts/filter", {"artifacts": {"key": {"any_": ["ada-measured"]}}})
    (row,) = json.loads(artifact["data"])
    assert row["stage"] == "dataset" and row["ratio"] == round(measured.measured_seconds / 0.2, 2)
