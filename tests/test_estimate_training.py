"""The estimate's training row follows the training settings in FLOPs and seconds, not only in evaluations.

Fast: the production shapes' counts are packaged (likeness/estimate/counts.json), and these settings change none.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from likeness.config import Backend, RunConfig, StopWhenFlat
from likeness.dataset.catalogue import load_catalogue
from likeness.estimate import roles
from likeness.estimate.character import estimate_character
from likeness.estimate.gpus import GPUS, price_per_hour
from likeness.models.profiles import load_profile

PROFILE = load_profile("production")


@pytest.fixture(scope="module", autouse=True)
def packaged_counts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The counts read as the CLI reads them: this machine's file, then the packaged ones."""
    roles.keep_counts_in(tmp_path_factory.mktemp("likeness-data") / "estimate-counts.json")
    yield
    roles.keep_counts_in(None)


def training(train: dict, backend: Backend = "local") -> object:
    config = RunConfig.from_profile(PROFILE, {"dataset": {"variations": ["front", "face"]}, "train": train})
    gpu = GPUS["H100"]
    rows = estimate_character(PROFILE, config, load_catalogue(), gpu, price_per_hour(gpu, None), backend)
    return next(row for row in rows if row.stage == "training")


def test_every_step_adds_a_training_step_of_flops_and_twice_the_steps_costs_about_twice():
    train = PROFILE.train
    base, twice = training({"steps": train.steps}), training({"steps": 2 * train.steps})
    assert train.gradient_checkpointing == "auto"  # off on an H100, where both experts stay resident without it
    step = roles.lora_training_step(train.base, train.size, train.rank, gradient_checkpointing=False)
    # The steps added are each a forward and a backward; the checkpoints' samples come on top.
    assert twice.flops - base.flops >= train.steps * step["step"]
    assert twice.evaluations > 1.9 * base.evaluations
    assert 1.9 < twice.seconds / base.seconds < 2.1
    assert twice.usd > 1.9 * base.usd


def test_stopping_when_flat_is_expected_to_save_the_steps_past_the_plateau_and_at_most_saves_none():
    from likeness.estimate.training import PLATEAU_SHARE, flat_stop

    train = PROFILE.train.model_copy(update={"steps": 2000, "checkpoint_every": 250})
    sampled = list(range(250, 2001, 250))
    # Flat from 60% (1,200) on: 1,250 and 1,500 do not improve; with patience 2 the rule stops at 1,500.
    assert PLATEAU_SHARE == 0.6
    rule = {"min_step": 500, "patience": 2}

    def stop(**changed: int) -> int:
        return flat_stop(train.model_copy(update={"stop_when_flat": StopWhenFlat(**{**rule, **changed})}), sampled)

    assert stop() == 1500 and stop(min_step=1750) == 1750 and stop(patience=4) == 2000
    assert flat_stop(train, sampled) == 2000  # off: every step
    full = training({"steps": 2000, "checkpoint_every": 250})
    stops = training({"steps": 2000, "checkpoint_every": 250, "stop_when_flat": rule})
    # Three quarters of the steps and of their samples; at most, the plateau never comes and every step runs.
    assert 0.74 < stops.seconds / full.seconds < 0.76
    assert stops.most_seconds == pytest.approx(full.most_seconds)


def test_samples_made_as_renders_run_take_the_speed_loras_4_evaluations_where_cfg_took_twice_the_steps():
    train = PROFILE.train
    sampled = len({*range(train.sample_interval, train.steps + 1, train.sample_interval), train.steps})
    images = sampled * len(train.sample_prompts)
    rendered, kept = training({}), training({"sampler": "training"})
    assert train.sampler == "render" and train.sample_guidance_scale > 1
    assert kept.evaluations - rendered.evaluations == images * (train.sample_steps * 2 - 4)
    assert rendered.seconds < kept.seconds
    # AI Toolkit samples its own way, whatever the sampler says.
    assert training({}, "runpod-aitoolkit").evaluations == kept.evaluations


def test_auto_checkpointing_is_off_where_the_experts_stay_resident_without_it_and_on_elsewhere():
    from likeness.estimate.training import checkpointing_decided

    train, images = PROFILE.train, 32
    assert train.gradient_checkpointing == "auto"
    for gpu, on in [("H100", False), ("H200", False), ("A100 80GB", False), ("L40S", True), ("RTX 5090", True)]:
        decided = checkpointing_decided(train, images, PROFILE, GPUS[gpu].memory_gib * 2**30)
        assert decided.gradient_checkpointing is on, gpu
    # A GPU not known yet (a pod's), or a video model the profile offloads: on.
    assert checkpointing_decided(train, images, PROFILE, None).gradient_checkpointing is True
    offloaded = PROFILE.with_memory_modes({"video": "model"})
    assert checkpointing_decided(train, images, offloaded, 80e9).gradient_checkpointing is True
    named = train.model_copy(update={"gradient_checkpointing": True})
    assert checkpointing_decided(named, images, PROFILE, 80e9) is named


def test_training_without_checkpointing_on_an_h100_saves_a_third_of_the_steps_flops_and_a_pod_keeps_it():
    auto, on = training({}), training({"gradient_checkpointing": True})
    assert auto.memory_mode == on.memory_mode == "none"  # both resident: nothing moves over PCIe
    assert 0.6 < auto.flops / on.flops < 0.75
    assert auto.seconds < 0.75 * on.seconds
    assert auto.peak_bytes <= GPUS["H100"].memory_gib * 2**30 * 0.9
    # A pod's GPU is picked as it starts: the estimate counts checkpointing on, as the pod trains.
    pod = training({}, backend="runpod-native")
    assert pod.flops == training({"gradient_checkpointing": True}, backend="runpod-native").flops
